{%- set regions = source('replica', 'regions') -%}

with

source as (

    {{ newest_versions(regions, 'region_id') }}

),

renamed as (

    select
        region_id,
        region_name,
        country_code,
        currency as currency_code,
        {{ as_utc('created_at') }} as created_at,
        {{ as_utc('updated_at') }} as updated_at,
        -- the dlt load that last wrote the row: incremental marts resume from it
        {{ column_or_null(regions, '_dlt_load_id', 'varchar') }} as load_id

    from source

)

select * from renamed
