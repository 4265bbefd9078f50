-- Conversion funnel per marketing channel over all published days.
-- Run: salesflow query analyses/funnel_by_channel.sql
select
    channel,
    sum(sessions) as sessions,
    sum(sessions_with_cart) as sessions_with_cart,
    sum(sessions_with_purchase) as sessions_with_purchase,
    round(sum(sessions_with_purchase) / nullif(sum(sessions), 0), 4)
        as session_conversion_rate
from marts.funnel_daily
group by channel
order by sessions desc
