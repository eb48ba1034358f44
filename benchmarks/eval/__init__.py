"""``voxline eval``: golden-set suites, scorecards and the regression gate between them.

- ``golden``: reading the golden sets in ``benchmarks/golden`` (formats in its README);
- ``scoring`` and ``audio_checks``: how one answer, transcript or synthesized clip is scored;
- ``suites``: the ``stt``, ``tts``, ``answers``, ``rag`` and ``latency`` suites;
- ``scorecard``: the ``scorecard.json`` / ``scorecard.md`` a run writes; ``gate``: ``diff`` of two
  scorecards and the verdict against a baseline; ``plots``: the figures;
- ``runner`` runs the suites; ``cli`` is the ``eval`` command.
"""
