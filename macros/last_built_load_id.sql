{% macro last_built_load_id(built_column='last_load_id') %}
    {#- The newest dlt load id already built into this incremental model ('' when none
        is): rows whose `load_id` is at or after it were (re)written since and are built
        again. Load ids are epoch seconds as text, so they sort as text; `>=` takes the
        last load again, which is what makes a build that ran while a load was half
        done whole.

        Read when the model is compiled (just before it runs) and written into its SQL
        as a literal: a constant filter lets the warehouse skip the history by each
        block's min/max (raw tables are appended in load order), where a subquery is
        only known while the query runs and every row is read. A unit test's `this` is
        a fixture in the query itself: there the subquery is kept. -#}
    {%- if execute and this is not string -%}
        {%- set newest = run_query(
            "select coalesce(max(built." ~ built_column ~ "), '') from " ~ this
            ~ " as built"
        ).columns[0].values()[0] -%}
        '{{ newest | replace("'", "''") }}'
    {%- else -%}
        (
            select coalesce(max(built.{{ built_column }}), '')
            from {{ this }} as built
        )
    {%- endif -%}
{%- endmacro %}
