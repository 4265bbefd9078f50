{% macro delete_gone(key, upstream, upstream_key=none, upstream_where=none) %}
    {#- The pre-hook of an incremental aggregate that loses rows when rows upstream are
        deleted: deletes this model's rows whose `key` is no longer in `upstream` (see
        the doc block incremental_by_load). `upstream_key`: the expression giving that
        key in `upstream` (default: a column of the same name); `upstream_where`: the
        condition for an upstream row to keep its key (default: every row).

        The anti-join reads both sides whole, so it runs only when a replica row
        upstream was deleted since the last build (`deleted_upstream()`, read before
        the build: a pre-hook, so the load ids the build is about to add do not hide an
        earlier deletion); otherwise, and on a first or full build, it renders to
        nothing, which dbt skips. Deleting before the build is the same as after: a
        gone key has no input row to rebuild it. Marts whose rows go with one replica
        record use `delete_tombstoned`, which needs no whole-table read. -#}
    {%- if not is_incremental() or not deleted_upstream() -%}
        {{- return('') -}}
    {%- endif -%}
    delete from {{ this }} as built
    where not exists (
        select 1 from {{ upstream }} as kept
        where
            {{ upstream_key or 'kept.' ~ key }} = built.{{ key }}
            {%- if upstream_where %}
            and {{ upstream_where }}
            {%- endif %}
    )
{%- endmacro %}
