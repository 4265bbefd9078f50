{%- set loads = source('salesflow', 'pipeline_loads') -%}

with

source as (

    select * from {{ loads }}

),

renamed as (

    select
        {{ surrogate_key(['cycle_id', 'entity']) }} as pipeline_load_id,
        cycle_id,
        entity,
        rows_loaded,
        -- counted since the quarantine alarm: a history written before lacks the column
        {{ column_or_null(loads, 'rows_quarantined', 'bigint') }} as rows_quarantined,
        -- already UTC: the loader writes these timestamps with their time zone
        loaded_at

    from source

)

select * from renamed
