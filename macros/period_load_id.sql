{% macro period_load_id(period) %}
    {#- The `last_load_id` of an aggregate row in an incremental sales aggregate (after
        `affected_periods`): the newest load of its rows, or for a period rebuilt because
        its units no longer matched (a row deleted: no newer row is left behind), the
        newest load of the input, so analysts' copy, refreshed by load id, takes it. -#}
    {%- if is_incremental() -%}
        greatest(
            last_load_id,
            case
                when {{ period }} in (select stale.{{ period }} from stale_periods as stale)
                    then (select newest.load_id from newest_load as newest)
            end
        )
    {%- else -%}
        last_load_id
    {%- endif -%}
{%- endmacro %}
