with

source as (

    select * from {{ source('replica', 'regions') }}

),

renamed as (

    select
        region_id,
        region_name,
        country_code,
        currency as currency_code,
        created_at at time zone 'utc' as created_at,
        updated_at at time zone 'utc' as updated_at

    from source

)

select * from renamed
