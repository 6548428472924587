"""Writers of the queue index that see mail as it is queued by the MTA.

``milter`` (Postfix, Sendmail; pymilter, the ``[milter]`` extra) and ``exim``
(a line protocol for Exim's data ACL) are thin adapters over one
:class:`~etrn_bridge.feeds.recorder.QueueRecorder`, which knows the policy's
domains and writes the index. They only append facts; they never decide a
flush, and a fault in them never costs a message: the MTA goes on without them.
Both run in the ``etrn-bridge milter`` process (libmilter owns its threads).
"""
