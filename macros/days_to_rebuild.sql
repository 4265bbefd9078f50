{% macro days_to_rebuild(input, unique_key, day_column, day_of, load_column='load_id') %}
    {#- One select (column `key`): the days an incremental build on Spark rewrites
        whole (parquet takes no delete: the mart is partitioned by `day_column` and
        the build overwrites the partitions it writes). The day (`day_of`, an
        expression on `input`'s columns) of each `input` row a load wrote since the
        model's last build (`build_from_load_id`), and the day each built row is in
        whose `unique_key` was loaded again (it may have moved to another day) or is
        gone from `input` (deleted upstream). -#}
    {%- set since = build_from_load_id() -%}
    select {{ day_of }} as key
    from {{ input }} as changed
    where changed.{{ load_column }} >= {{ since }}
    union
    select built.{{ day_column }} as key
    from {{ this }} as built
    left join {{ input }} as current_rows
        on built.{{ unique_key }} = current_rows.{{ unique_key }}
    where
        current_rows.{{ unique_key }} is null
        or current_rows.{{ load_column }} >= {{ since }}
{%- endmacro %}
