"""Upstream schema changes: detect them, log them once, say what they break, follow
what the platform announces.

* ``changes`` — a change, as logged; ``detect`` — what changed in one load (shape and
  business values); ``changelog`` — ``raw.schema_changelog`` and the known values;
* ``impact`` — what a change reaches and how badly, from the project's column lineage
  (the same answer the data contract uses);
* ``announcements`` — announced changes, their milestones and notices;
* ``declared`` — every announcement in one call: the API's, and those declared in the
  repository's ``announcements/`` folder (one YAML file per change);
* ``observed`` — announced against observed: each announced change against the
  changelog (not seen, seen different, seen early);
* ``track`` — the step every cycle runs after its load: detect, log, notify.

May import: the replica source, :mod:`loaders.contract`, :mod:`loaders.monitoring`
(notices, the cycles table and the last cycle's state) and the foundations; nothing that
runs the pipeline.
"""
