"""edge_signer: receipts at the point of delivery.

The signing library (:mod:`~edge_signer.signer`), the publish-time catalog
(:mod:`~edge_signer.catalog`), the access check on marketplace tokens
(:mod:`~edge_signer.tokens`), ``ReceiptMiddleware`` (:mod:`~edge_signer.middleware`, pure
ASGI), the durable spool and its group-committing writer (:mod:`~edge_signer.spool`), the
verifying batch submitter (:mod:`~edge_signer.submitter`) and the demo origin
(:mod:`~edge_signer.demo`, the only module that needs a web framework). Builds on tlog
alone; must not import verifier, log_server, anchor, billing, cli or peewee. Design notes:
``docs/design/edge.md``.
"""
