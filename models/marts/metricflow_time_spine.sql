-- one row per day: the calendar MetricFlow joins metrics to (metric_time), from dbt's
-- own date spine, so it is the same calendar on every adapter
with

days as (

    {{ dbt.date_spine(
        'day',
        "cast('2020-01-01' as date)",
        "cast('2031-01-01' as date)"
    ) }}

),

final as (

    select cast(date_day as date) as date_day
    from days

)

select * from final
