-- depends_on: {{ ref('stg_replica__events') }}
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='session_id',
        on_schema_change='append_new_columns',
    )
}}

with

{% if is_incremental() %}
    touched_sessions as (

        -- sessions with an event that arrived since the last build (they arrive late)
        select distinct session_id
        from {{ ref('stg_replica__events') }}
        where arrived_at >= {{ since_last_build('last_arrived_at') }}

    ),
{% endif %}

sessions as (

    select * from {{ ref('int_sessions_aggregated_from_events') }}
    {% if is_incremental() %}
        where session_id in (select touched.session_id from touched_sessions as touched)
    {% endif %}

),

final as (

    select
        session_id,
        customer_id,
        order_id,
        channel,
        utm_source,
        utm_medium,
        utm_campaign,
        platform,
        device_type,
        events,
        product_views,
        has_product_view,
        has_reached_cart,
        has_reached_checkout,
        has_purchased,
        cast(started_at as date) as session_date,
        started_at,
        ended_at,
        last_arrived_at

    from sessions

)

select * from final
