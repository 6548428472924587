"""etrn-bridge: one policy for RFC 1985 ETRN in front of Postfix, Exim and Sendmail."""

__version__ = "0.1.0"
