-- one row per day: the calendar MetricFlow joins metrics to (metric_time)
with

days as (

    select cast(range as date) as date_day
    from range(date '2020-01-01', date '2031-01-01', interval 1 day)

),

final as (

    select date_day
    from days

)

select * from final
