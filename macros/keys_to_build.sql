{% macro keys_to_build(column, keys, bounds=none, limit=20000) %}
    {#- A condition keeping the rows an incremental build reads: those whose `column`
        is one of the keys `keys` selects (a select of one column named `key`).

        On DuckDB, in a run (not a unit test, whose inputs are fixtures in the query),
        the keys are read when the model is compiled and written into its SQL as a
        constant list: DuckDB pushes a constant filter into the scan, through the
        staging views (a customer's hashes are computed for the customers built, not
        for every one) and skipping the blocks whose min/max miss every key, where a
        subquery is joined only after every row was read and computed. `bounds`, a
        pair (`base_column`, `width`): `column` is computed from `base_column`
        (a period of a time), and the rows read are bounded to the keys' span on it,
        which the scan can skip by as well. Past `limit` keys, and on other
        warehouses, the subquery. -#}
    {%- if execute and this is not string and target.type == 'duckdb' -%}
        {%- set found = run_query(
            "select cast(key as varchar), typeof(key), cast(min(key) over () as varchar),"
            ~ " cast(max(key) over () as varchar) from (select distinct k.key from ("
            ~ keys ~ ") as k where k.key is not null limit " ~ (limit + 1) ~ ")"
        ) -%}
        {%- set values = found.columns[0].values() -%}
        {%- set types = found.columns[1].values() -%}
        {%- if values | length == 0 -%}
            false
        {%- elif values | length <= limit -%}
            {%- set literals = [] -%}
            {%- for v in values -%}
                {%- do literals.append(
                    "cast('" ~ (v | replace("'", "''")) ~ "' as " ~ types[loop.index0] ~ ")"
                ) -%}
            {%- endfor -%}
            {%- set listed = literals | join(', ') -%}
            {{ column }} in ({{ listed }})
            {%- if bounds %}
            and {{ bounds[0] }} >= cast('{{ found.columns[2].values()[0] }}' as {{ types[0] }})
            and {{ bounds[0] }} < cast('{{ found.columns[3].values()[0] }}' as {{ types[0] }})
                + {{ bounds[1] }}
            {%- endif -%}
        {%- else -%}
            {{ column }} in (select k.key from ({{ keys }}) as k)
        {%- endif -%}
    {%- else -%}
        {{ column }} in (select k.key from ({{ keys }}) as k)
    {%- endif -%}
{%- endmacro %}
