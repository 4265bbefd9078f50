with

source as (

    select * from {{ source('salesflow', 'pipeline_loads') }}

),

renamed as (

    select
        {{ surrogate_key(['cycle_id', 'entity']) }} as pipeline_load_id,
        cycle_id,
        entity,
        rows_loaded,
        -- already UTC: the loader writes these timestamps with their time zone
        loaded_at

    from source

)

select * from renamed
