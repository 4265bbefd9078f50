{%- set regions = source('replica', 'regions') -%}

with

source as (

    select * from {{ regions }}

),

renamed as (

    select
        region_id,
        region_name,
        country_code,
        currency as currency_code,
        created_at at time zone 'utc' as created_at,
        updated_at at time zone 'utc' as updated_at,
        -- the dlt load that last wrote the row: incremental marts resume from it
        {{ column_or_null(regions, '_dlt_load_id', 'varchar') }} as load_id

    from source

)

select * from renamed
