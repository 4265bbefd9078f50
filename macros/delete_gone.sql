{% macro delete_gone(key, source) %}
    {#- A post-hook statement removing this model's rows whose key is no longer in
        `source` (deleted upstream). An incremental build inserts every key `source`
        gained, so the two sides hold the same keys exactly when they hold as many:
        the anti-join, which reads both sides whole, runs only when the counts differ
        (a cycle without deletions pays two counts). Renders to nothing when there is
        nothing to delete, which dbt skips. -#}
    {%- if execute -%}
        {%- set counts = run_query(
            "select (select count(*) from " ~ this ~ ") = (select count(*) from "
            ~ source ~ ") as same"
        ) -%}
        {%- if counts.columns[0].values()[0] -%}
            {{- return('') -}}
        {%- endif -%}
    {%- endif -%}
    delete from {{ this }} as built
    where not exists (
        select 1 from {{ source }} as kept
        where kept.{{ key }} = built.{{ key }}
    )
{%- endmacro %}
