"""The live board: the marketing dashboards the dbt exposures name, served on 127.0.0.1.

A Streamlit app (``app.py``, started by ``salesflow board`` / ``make board``) with one
page per exposure: ``/live`` (product sales today, by hour), ``/funnel`` (funnel and
acquisition) and ``/retention`` (monthly cohorts). Each page re-reads its figures every
few seconds without a reload and says how current they are.

It reads only what analysts may read (:mod:`.marts`): the published DuckDB file,
read-only, a new connection per refresh so each one sees the latest publication and
none holds a version open; on PostgreSQL the ``marts`` schema, as the analyst login
libpq's environment names. Figures come from the same marts and definitions as the
semantic layer's metrics, so the board and ``mf query`` agree.

The banner on every page (:mod:`.notices`) is ``salesflow status``'s report put in
words for the people reading the figures: an outage with how far the figures are
complete, a recovery, announced changes that break the marts with the dashboards and
owners they touch, detected changes with their impact, held-back and stale marts.

May import: the monitoring and contract services, the foundations, the published file's
path (:mod:`loaders.runners.publish`), and Streamlit, pandas and Altair (this package
only).
"""
