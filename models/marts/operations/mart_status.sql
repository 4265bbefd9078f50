{{ config(materialized='view') }}

-- Which marts are current and which are held back at their last good version: a view,
-- so the copy published with the marts says what that publication held back.
with

statuses as (

    select * from {{ ref('stg_salesflow__mart_status') }}

),

final as (

    select
        mart_name,
        mart_status,
        held_back_by,
        held_back_reason,
        is_held_back,
        status_since,
        last_published_at,
        status_updated_at
    from statuses

)

select * from final
