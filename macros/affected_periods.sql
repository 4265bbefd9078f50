{% macro affected_periods(period, rows, load_id, units, sold='true') %}
    {#- The incremental CTEs of a sales aggregate at one grain (`period`), ending in
        `affected_periods`: the periods with a row loaded since the last build, and the periods whose units no longer match what was built — a deleted
        or cancelled row leaves no changed row behind, its period is found by its units.
        `rows`: the CTE read; `load_id`: its column of load ids; `units`: the expression
        summed into `units`; `sold`: the condition for a row to count. Also
        `newest_load`, the newest load id of `rows` (see stale_load_id). -#}
    changed_periods as (

        select distinct {{ period }}
        from {{ rows }}
        where {{ load_id }} >= {{ last_built_load_id() }}

    ),

    built_units as (

        select
            {{ period }},
            sum(units) as units
        from {{ this }}
        group by {{ period }}

    ),

    current_units as (

        select
            {{ period }},
            sum({{ units }}) as units
        from {{ rows }}
        where {{ sold }}
        group by {{ period }}

    ),

    stale_periods as (

        select current_units.{{ period }}
        from current_units
        left join built_units
            on current_units.{{ period }} = built_units.{{ period }}
        where built_units.units is distinct from current_units.units

    ),

    newest_load as (

        select max({{ load_id }}) as load_id
        from {{ rows }}

    ),

    affected_periods as (

        select {{ period }} from changed_periods
        union
        select {{ period }} from stale_periods

    )
{%- endmacro %}
