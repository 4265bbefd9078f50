with

regions as (

    select * from {{ ref('stg_replica__regions') }}

),

region_reference as (

    select * from {{ ref('region_reference') }}

),

currency_rates as (

    select * from {{ ref('currency_rates') }}

),

final as (

    select
        regions.region_id,
        regions.region_name,
        regions.country_code,
        regions.currency_code,
        currency_rates.units_per_usd,
        region_reference.region_id is not null as is_expected_region,
        regions.created_at,
        regions.updated_at

    from regions
    left join region_reference
        on regions.region_id = region_reference.region_id
    left join currency_rates
        on regions.currency_code = currency_rates.currency_code

)

select * from final
