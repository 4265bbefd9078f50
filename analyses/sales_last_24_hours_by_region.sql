-- Hourly sales of the last 24 hours per region: the near-real-time view marketing asked
-- for. The newest hour fills up as the pipeline publishes (see marts._published).
-- Run: salesflow query analyses/sales_last_24_hours_by_region.sql
select
    sales_hour,
    region_id,
    sum(orders) as orders,
    sum(revenue_usd) as revenue_usd
from marts.product_sales_hourly
where sales_hour > (select max(sales_hour) from marts.product_sales_hourly)
    - interval 24 hour
group by sales_hour, region_id
order by sales_hour desc, revenue_usd desc
