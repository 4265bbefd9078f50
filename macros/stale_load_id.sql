{% macro stale_load_id(key, stale, stale_key=none) %}
    {#- For a row an incremental build rebuilt because it went stale (something upstream
        was deleted: no newer row is left behind), the newest load id of the input, so
        analysts' copy, refreshed by load id, takes the rebuild; else null. Used inside
        `greatest(...)` with the row's own load ids. `key`: the row's key expression;
        `stale`: the CTE of stale keys; `stale_key`: its column (default: the column
        name in `key`). Reads the CTE `newest_load` (one row, `load_id`). -#}
    {%- if is_incremental() -%}
        case
            when {{ key }} in (
                select stale.{{ stale_key or key.split('.')[-1] }}
                from {{ stale }} as stale
            )
                then (select newest.load_id from newest_load as newest)
        end
    {%- else -%}
        cast(null as varchar)
    {%- endif -%}
{%- endmacro %}
