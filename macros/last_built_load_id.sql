{% macro last_built_load_id(built_column='last_load_id') %}
    {#- The newest dlt load id already built into this incremental model ('' when none
        is). Load ids are epoch seconds as text, so they sort as text. An incremental
        filter starts from `build_from_load_id()`, which says whether this load itself
        is taken again.

        Read when the model is compiled (just before it runs) and written into its SQL
        as a literal: a constant filter lets the warehouse skip the history by each
        block's min/max (raw tables are appended in load order), where a subquery is
        only known while the query runs and every row is read. A unit test's `this` is
        a fixture in the query itself: there the subquery is kept.

        Reading it is itself a scan of the model's column, several per build (the
        model, its pre-hooks), which grows with the history. On DuckDB the newest load
        id is first looked for among recent ones (`recent_load_id_bounds()`: a load id
        at or after each bound), a filter the scan skips the older blocks by; the first
        bound with a row gives the maximum of every row, since all older rows are
        below it. None found, the whole column is read. -#}
    {%- if execute and this is not string -%}
        {%- set found = namespace(newest=none) -%}
        {%- set bounds = recent_load_id_bounds() if target.type == 'duckdb' else [] -%}
        {%- for bound in bounds + [none] -%}
            {%- if found.newest is none -%}
                {%- set newest = run_query(
                    "select max(built." ~ built_column ~ ") from " ~ this ~ " as built"
                    ~ ("" if bound is none else
                       " where built." ~ built_column ~ " >= '" ~ bound ~ "'")
                ).columns[0].values()[0] -%}
                {%- if newest is not none or bound is none -%}
                    {%- set found.newest = newest or '' -%}
                {%- endif -%}
            {%- endif -%}
        {%- endfor -%}
        '{{ found.newest | replace("'", "''") }}'
    {%- else -%}
        (
            select coalesce(max(built.{{ built_column }}), '')
            from {{ this }} as built
        )
    {%- endif -%}
{%- endmacro %}


{% macro recent_load_id_bounds() %}
    {#- Load ids (epoch seconds as text, as dlt writes them) ten minutes, a day and a
        week before now: the recent ranges an incremental model's newest built load is
        looked for in first (`last_built_load_id`). A clock that moved only makes a
        range come up empty, and the next is tried. -#}
    {%- set now = modules.datetime.datetime.now(modules.pytz.utc) -%}
    {%- set bounds = [] -%}
    {%- for seconds in [600, 86400, 7 * 86400] -%}
        {%- do bounds.append("%.6f" | format(now.timestamp() - seconds)) -%}
    {%- endfor -%}
    {{- return(bounds) -}}
{%- endmacro %}


{% macro build_from_load_id(built_column='last_load_id') %}
    {#- The first load id an incremental build takes (SQL, compared with `>=`): the
        loads after the newest one built (`last_built_load_id()`), and, where a build
        can run beside a load, that one again. On a server warehouse dlt commits a load
        table by table, so a build may have seen half of it: taking it again makes that
        build whole. A DuckDB file has one writer, and the loader holds it from a load's
        first write to its repair (`loaders.warehouse.kept_open`): no build sees a load
        half done, and the newest built load is not read again (after a backfill it is
        the whole history). Load ids are digits and a dot, so the first text after a
        load id is that load id followed by a space. Unit tests (`this` a fixture, the
        newest load a subquery) take it again on every target: their fixtures pin the
        models' filters, the boundary is the warehouse's. -#}
    {%- set newest = last_built_load_id(built_column) | trim -%}
    {%- if target.type == 'duckdb' and newest.startswith("'") and newest != "''" -%}
        {{ newest[:-1] ~ " '" }}
    {%- else -%}
        {{ newest }}
    {%- endif -%}
{%- endmacro %}
