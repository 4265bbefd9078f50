{% macro delete_gone(key, upstream, upstream_key=none, upstream_where=none) %}
    {#- The post-hook of every incremental mart that loses rows upstream: deletes this
        model's rows whose `key` is no longer in `upstream` (see the doc block
        incremental_by_load). `upstream_key`: the expression giving that key in
        `upstream` (default: a column of the same name); `upstream_where`: the
        condition for an upstream row to keep its key (default: every row).

        When both sides have one row per key (no `upstream_key` nor `upstream_where`),
        the anti-join, which reads both sides whole, runs only when their counts
        differ: an incremental build inserts every key `upstream` gained, so equal
        counts mean equal keys (a cycle without deletions pays two counts); when they
        are equal it renders to nothing, which dbt skips. -#}
    {%- set one_row_per_key = upstream_key is none and upstream_where is none -%}
    {%- if execute and one_row_per_key -%}
        {%- set counts = run_query(
            "select (select count(*) from " ~ this ~ ") = (select count(*) from "
            ~ upstream ~ ") as same"
        ) -%}
        {%- if counts.columns[0].values()[0] -%}
            {{- return('') -}}
        {%- endif -%}
    {%- endif -%}
    delete from {{ this }} as built
    where not exists (
        select 1 from {{ upstream }} as kept
        where
            {{ upstream_key or 'kept.' ~ key }} = built.{{ key }}
            {%- if upstream_where %}
            and {{ upstream_where }}
            {%- endif %}
    )
{%- endmacro %}
