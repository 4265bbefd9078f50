-- Revenue, orders and units per product line over the last 7 days of sales, best first.
-- Run: salesflow query analyses/top_product_lines_last_7_days.sql
select
    product_line,
    sum(orders) as orders,
    sum(units) as units,
    sum(revenue_usd) as revenue_usd
from marts.product_sales_daily
where sales_date > (select max(sales_date) from marts.product_sales_daily) - 7
group by product_line
order by revenue_usd desc
