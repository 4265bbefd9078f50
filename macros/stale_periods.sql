{% macro stale_periods(period, input, units, counted='true') %}
    {#- One select: the `period`s of `input` whose summed `units` (over the rows where
        `counted`) no longer match what this incremental model built, each with the
        newest load id of `input` as `newest_load_id`. A row deleted or cancelled upstream
        leaves no newer row behind, only totals that changed: this finds its period.
        A cancellation reloads its order, so only a deletion upstream makes a period
        stale: when none happened since the last build (`deleted_upstream()`), no
        period is, and the whole-table comparison is not run. -#}
    {%- if not deleted_upstream() %}
    select
        {{ period }},
        cast(null as varchar) as newest_load_id
    from {{ input }}
    where false
    {%- else %}
    select
        current_totals.{{ period }},
        (select max(newest.last_load_id) from {{ input }} as newest) as newest_load_id
    from (
        select
            {{ period }},
            sum({{ units }}) as units
        from {{ input }}
        where {{ counted }}
        group by {{ period }}
    ) as current_totals
    left join (
        select
            {{ period }},
            sum(units) as units
        from {{ this }}
        group by {{ period }}
    ) as built_totals
        on current_totals.{{ period }} = built_totals.{{ period }}
    where built_totals.units is distinct from current_totals.units
    {%- endif %}
{%- endmacro %}
