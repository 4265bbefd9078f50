{% macro get_where_subquery(relation) -%}
    {#- What a generic data test reads of the node it tests (dbt's own macro, extended).
        dbt's `where` config applies as in dbt. Besides, when the run is given the var
        `salesflow_tests_since` (a dlt load id) and the tested node has a column
        holding the load that last changed each row (`load_column()`), a test whose verdict
        on a row depends on that row alone (`row_tests()`) reads only the rows loaded
        after that load, and `unique` reads only the keys such a row holds (with every
        row holding them, new or old). salesflow's periodic data tests pass the load at
        the start of the last run whose tests all passed: over years of history a run
        costs what the new rows cost. Runs without the var (builds, `dbt test`, the
        periodic run after a failure, the whole run watch makes now and then) read
        everything. -#}
    {%- set where = config.get('where', '') -%}
    {%- set since = var('salesflow_tests_since', '') -%}
    {%- set scoped = tested_since_filter(relation, since) if since else '' -%}
    {%- set conditions = [] -%}
    {%- if where -%}{%- do conditions.append('(' ~ where ~ ')') -%}{%- endif -%}
    {%- if scoped -%}{%- do conditions.append(scoped) -%}{%- endif -%}
    {%- if conditions -%}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ conditions | join(' and ') }}) dbt_subquery
        {%- endset -%}
        {%- do return(filtered) -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}


{% macro row_tests() %}
    {#- Generic tests whose verdict on a row depends on that row alone (relationships:
        on the row and the whole parent, which the test still reads whole). -#}
    {%- do return(['not_null', 'accepted_values', 'relationships', 'not_after',
                   'non_negative', 'within_range']) -%}
{%- endmacro %}


{% macro tested_since_filter(relation, since) %}
    {#- The condition restricting the test being compiled to what loaded after `since`
        ('' when it cannot be restricted: a singular test, a test of another kind, a
        node without a load column). -#}
    {%- set test = model.get('test_metadata') if model is mapping else none -%}
    {%- set tested = tested_node() -%}
    {%- if not test or tested is none -%}
        {%- do return('') -%}
    {%- endif -%}
    {%- set column = load_column(tested) -%}
    {%- if not column -%}
        {%- do return('') -%}
    {%- endif -%}
    {%- set newer = adapter.quote(column) ~ " > '" ~ (since | replace("'", "''")) ~ "'" -%}
    {%- if test.get('name') in row_tests() -%}
        {%- do return(newer) -%}
    {%- elif test.get('name') == 'unique' and test.get('kwargs', {}).get('column_name') -%}
        {%- set key = test['kwargs']['column_name'] -%}
        {%- do return(key ~ ' in (select ' ~ key ~ ' from ' ~ relation ~ ' where ' ~ newer ~ ')') -%}
    {%- endif -%}
    {%- do return('') -%}
{%- endmacro %}


{% macro load_column(node) %}
    {#- The column of `node` (a graph node) holding the load that last changed each row:
        its `meta.load_column`, else `last_load_id` on an incremental mart built by load
        (doc block incremental_by_load: one `unique_key` and a `last_load_id` column,
        which every change to a row makes newer; analysts' copy is refreshed from it
        too), else none. -#}
    {%- set config = node.get('config', {}) or {} -%}
    {#- a source's table inherits its source's meta -#}
    {%- set given = (config.get('meta', {}) or {}).get('load_column')
        or (node.get('meta', {}) or {}).get('load_column')
        or (node.get('source_meta', {}) or {}).get('load_column') -%}
    {%- if given -%}
        {%- do return(given) -%}
    {%- elif config.get('materialized') == 'incremental'
        and config.get('unique_key') is string
        and 'last_load_id' in (node.get('columns', {}) or {}) -%}
        {%- do return('last_load_id') -%}
    {%- endif -%}
    {%- do return(none) -%}
{%- endmacro %}


{% macro tested_node() %}
    {#- The graph node the test being compiled tests: the model, seed or snapshot it is
        attached to, else the one source it reads (none when it reads several). -#}
    {%- set attached = model.get('attached_node') if model is mapping else none -%}
    {%- if attached and attached in graph.nodes -%}
        {%- do return(graph.nodes[attached]) -%}
    {%- endif -%}
    {%- set sources = [] -%}
    {%- for uid in (model.get('depends_on', {}) or {}).get('nodes', []) if model is mapping -%}
        {%- if uid in graph.sources -%}{%- do sources.append(graph.sources[uid]) -%}{%- endif -%}
    {%- endfor -%}
    {%- do return(sources[0] if sources | length == 1 else none) -%}
{%- endmacro %}
