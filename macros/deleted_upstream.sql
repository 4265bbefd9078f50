{% macro deleted_upstream(only=none) %}
    {#- Whether a replica record upstream of this incremental model was deleted since
        the model's last build: a row of the deletion log (`deletion_log`) of one of its
        sources (found through dbt's graph, however many models lie between) written by
        a load at or after `last_built_load_id()`. Deletions are the one way rows leave
        the marts' inputs, so the checks that find what one took away from a total
        (`stale_periods`, `delete_gone`) read whole tables only when this is true. Read
        when the model runs, from the logs' newest blocks. True when not executing and
        in unit tests (`this` a fixture), so the full checks are what those render.
        `only`: the names of the replica sources to look at (default: every one
        upstream). -#}
    {%- if not execute or this is string -%}
        {{- return(true) -}}
    {%- endif -%}
    {%- set since = last_built_load_id() -%}
    {%- set checks = [] -%}
    {%- for source_id in upstream_sources(model.unique_id) -%}
        {%- set src = graph.sources[source_id] -%}
        {%- if src.source_name == 'replica' and (only is none or src.name in only) -%}
            {%- set log = deletion_log(src.name) -%}
            {%- if log is not none -%}
                {%- do checks.append(
                    "select 1 from " ~ log ~ " where _dlt_load_id >= " ~ since
                ) -%}
            {%- endif -%}
        {%- endif -%}
    {%- endfor -%}
    {%- if not checks -%}
        {{- return(false) -}}
    {%- endif -%}
    {%- set found = run_query(
        "select exists (" ~ checks | join(" union all ") ~ ") as deleted"
    ) -%}
    {{- return(found.columns[0].values()[0]) -}}
{%- endmacro %}


{% macro upstream_sources(unique_id) %}
    {#- The unique ids of the sources `unique_id` reads, directly or through other
        nodes of dbt's graph. -#}
    {%- set found = [] -%}
    {%- set node = graph.nodes.get(unique_id) -%}
    {%- if node -%}
        {%- for parent in node.depends_on.nodes -%}
            {%- if parent.startswith('source.') -%}
                {%- do found.append(parent) -%}
            {%- else -%}
                {%- do found.extend(upstream_sources(parent)) -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{- return(found | unique | list) -}}
{%- endmacro %}
