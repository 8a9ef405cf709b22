"""tlog: the pure core of meterlog.

Hashing, the append-only hash store layout, RFC 6962/9162 proofs, C2SP tiles, signed notes,
checkpoints and proof bundles, and the canonical entry encoding. Everything that touches the
0x00/0x01 prefixes, proof math, or the byte formats lives here and nowhere else.

Pure: the standard library and pynacl only (``tlog.entry`` uses orjson when it is
installed, as the log server installs it, to write and read entries ten times as fast, with
the same bytes). No files, sockets, clocks, randomness or environment; time, keys and
storage are arguments. Nothing of meterlog's is imported here
(import-linter enforces it).

Modules, bottom-up: ``errors``, ``parsing``, ``hashing``, ``merkle``, ``proofs``, ``tiles``,
``note``, ``checkpoint``, ``entry``, ``bundle``, ``token`` (access tokens), ``provenance``
(the edge's delivery headers).
"""
