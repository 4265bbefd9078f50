{% macro lake_url() %}
    {#- Where the loader's lake is (dlt's DESTINATION__FILESYSTEM__BUCKET_URL, default
        data/lake), as a URL Spark reads: an object store's as given (s3a://...),
        a local path as a file: URL, a relative one from the project's folder. -#}
    {%- set url = env_var('DESTINATION__FILESYSTEM__BUCKET_URL', 'data/lake') | trim -%}
    {%- set url = url[:-1] if url.endswith('/') else url -%}
    {%- if modules.re.match('^[A-Za-z][A-Za-z0-9+.-]*:', url) -%}
        {{- return(url) -}}
    {%- endif -%}
    {%- if not url.startswith('/') -%}
        {%- set url = (flags.PROJECT_DIR or '.') ~ '/' ~ url -%}
    {%- endif -%}
    {%- if not url.startswith('/') -%}
        {#- Spark would take a relative location from its warehouse: the project's
            folder as given to dbt is relative to the working directory, the JVM's
            (launched by dbt's process) -#}
        {%- set cwd = run_query(
            "select reflect('java.lang.System', 'getProperty', 'user.dir')"
        ).columns[0].values()[0] -%}
        {%- set url = cwd ~ '/' ~ url -%}
    {%- endif -%}
    {%- set parts = [] -%}
    {%- for part in url.split('/') if part not in ['', '.'] -%}
        {%- if part == '..' and parts -%}
            {%- do parts.pop() -%}
        {%- else -%}
            {%- do parts.append(part) -%}
        {%- endif -%}
    {%- endfor -%}
    {{- return('file:/' ~ parts | join('/')) -}}
{%- endmacro %}
