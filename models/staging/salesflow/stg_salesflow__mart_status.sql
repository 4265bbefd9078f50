with

source as (

    select * from {{ source('salesflow', 'mart_status') }}

),

renamed as (

    select
        mart as mart_name,
        status as mart_status,
        held_back_by,
        reason as held_back_reason,
        status = 'held_back' as is_held_back,
        -- already UTC: the loader writes these timestamps with their time zone
        status_since,
        last_published_at,
        updated_at as status_updated_at

    from source

)

select * from renamed
