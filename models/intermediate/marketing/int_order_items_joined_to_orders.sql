-- the join is the macro order_items_joined, run here on every line; fct_order_items's
-- incremental builds run it on the lines they rebuild only
{{ order_items_joined(ref('stg_replica__order_items')) }}
