{%- set customers = source('replica', 'customers') -%}

with

source as (

    {{ newest_versions(customers, 'customer_id', deleted_marker='deleted_at') }}

),

renamed as (

    select
        customer_id,
        region_id,
        acquisition_channel,
        {{ hash_pii('email') }} as email_hash,
        -- restructure: first/last name became full_name (old rows keep the old pair)
        {{ hash_pii(
            "coalesce(nullif(trim(" ~ column_or_null(customers, 'full_name', 'varchar')
            ~ "), ''), nullif(trim(concat_ws(' ', "
            ~ column_or_null(customers, 'first_name', 'varchar') ~ ", "
            ~ column_or_null(customers, 'last_name', 'varchar') ~ ")), ''))"
        ) }} as customer_name_hash,
        phone is not null as has_phone,
        is_marketing_opt_in,
        {{ as_utc('created_at') }} as created_at,
        {{ as_utc('updated_at') }} as updated_at,
        -- the dlt load that last wrote the row: incremental marts resume from it
        {{ column_or_null(customers, '_dlt_load_id', 'varchar') }} as load_id

    from source
    where deleted_at is null

)

select * from renamed
