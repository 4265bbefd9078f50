{#- Spark: parquet tables take no delete, days are overwritten (doc block spark_lane) -#}
{%- set spark = target.type == 'spark' -%}
{%- set spark_days = "'(select session_id, min(occurred_at) as started_at,"
    ~ " max(load_id) as last_load_id from ' ~ ref('stg_replica__events')"
    ~ " ~ ' group by session_id)', 'session_id', 'session_date',"
    ~ " 'cast(started_at as date)', 'last_load_id'" -%}
{{
    config(
        materialized='incremental',
        incremental_strategy='insert_overwrite' if spark else 'delete+insert',
        partition_by=['session_date'] if spark else none,
        unique_key='session_id',
        on_schema_change='append_new_columns',
        pre_hook=["{{ drop_emptied_days(" ~ spark_days ~ ") }}"] if spark else [],
    )
}}

with

-- not materialized: the incremental filter below is pushed into the input's scan,
-- which DuckDB would otherwise copy whole once per build
events as {{ not_materialized() }}(

    select * from {{ ref('stg_replica__events') }}

),

selected_events as (

    -- all events of the sessions to build, selected before aggregating: an
    -- incremental build rolls up those sessions only, those with an event loaded
    -- since the last build (events arrive late)
    select * from events
    {% if is_incremental() and spark %}
        {%- set starts -%}
            (
                select
                    session_id,
                    min(occurred_at) as started_at,
                    max(load_id) as last_load_id
                from {{ ref('stg_replica__events') }}
                group by session_id
            )
        {%- endset %}
        -- Spark: every session of the days with a session an event was loaded for
        -- since the last build, before and after (a late event may move its start)
        where session_id in (
            select starts.session_id
            from {{ starts }} as starts
            where {{ in_days('cast(starts.started_at as date)', days_to_rebuild(
                starts, 'session_id', 'session_date', 'cast(started_at as date)',
                'last_load_id'
            )) }}
        )
    {% elif is_incremental() %}
        where {{ keys_to_build(
            'session_id',
            'select changed.session_id as key from ' ~ ref('stg_replica__events')
            ~ ' as changed where changed.load_id >= ' ~ build_from_load_id()
        ) }}
    {% endif %}

),

aggregated as (

    select
        session_id,
        max(customer_id) as customer_id,
        max(order_id) as order_id,
        {{ arg_min('channel', 'occurred_at') }} as channel,
        {{ arg_min('utm_source', 'occurred_at') }} as utm_source,
        {{ arg_min('utm_medium', 'occurred_at') }} as utm_medium,
        {{ arg_min('utm_campaign', 'occurred_at') }} as utm_campaign,
        {{ arg_min('platform', 'occurred_at') }} as platform,
        {{ arg_min('device_type', 'occurred_at') }} as device_type,
        count(*) as events,
        count(*) filter (where event_type = 'product_view') as product_views,
        bool_or(event_type = 'product_view') as has_product_view,
        -- a later step implies the earlier ones, even if their event is missing
        bool_or(event_type in ('add_to_cart', 'checkout', 'purchase'))
            as has_reached_cart,
        bool_or(event_type in ('checkout', 'purchase')) as has_reached_checkout,
        bool_or(event_type = 'purchase') as has_purchased,
        min(occurred_at) as started_at,
        max(occurred_at) as ended_at,
        max(arrived_at) as last_arrived_at,
        max(load_id) as last_load_id

    from selected_events
    group by session_id

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
        last_arrived_at,
        last_load_id

    from aggregated

)

select * from final
