"""The queue index: which queued messages each recipient domain has (pure storage).

``store`` keeps the facts in one SQLite file; ``settings`` is the ``index:``
config section. Its writers (the milter, the Exim feed, the reconciler in
``etrn_bridge.backends.reconcile``) append facts; the MTA backends read it.
Nothing here runs an MTA program or decides anything.
"""
