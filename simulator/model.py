"""The sales platform's data model: entities, their fields per schema version, reference data
and the schema evolutions the platform ships.

This module is the single source of truth for the simulated platform. The production
database's DDL, the replica API's output and its ``/v1/schema`` endpoint are all derived
from it, so a field added here shows up everywhere at once.

Field types are the API's logical types, not SQLite's:

``integer``, ``string``, ``boolean``, ``timestamp`` (ISO-8601 UTC with microseconds and a
``Z``) and ``decimal`` (a decimal number carried as a JSON string, e.g. ``"12.99"``).

The foundation of the package: imports no other project module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# --- entities (schema version 1) -------------------------------------------------------

SQLITE_TYPES = {
    "integer": "INTEGER",
    "string": "TEXT",
    "boolean": "INTEGER",
    "timestamp": "TEXT",
    "decimal": "TEXT",
}


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class Entity:
    name: str
    primary_key: str
    fields: tuple[Field, ...]
    description: str
    # whether the platform can delete rows of this entity (the API then serves tombstones)
    deletable: bool = False

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")


def _f(name: str, type_: str, required: bool = False, description: str = "") -> Field:
    return Field(name, type_, required, description)


ENTITIES: dict[str, Entity] = {
    e.name: e
    for e in (
        Entity(
            "regions",
            "region_id",
            (
                _f("region_id", "string", True, "Region code, e.g. eu-west."),
                _f("region_name", "string", True),
                _f("country_code", "string", True, "ISO 3166-1 alpha-2."),
                _f("currency", "string", True, "ISO 4217 currency of prices in the region."),
                _f("created_at", "timestamp", True),
                _f("updated_at", "timestamp", True),
            ),
            "Sales regions the platform sells in.",
        ),
        Entity(
            "customers",
            "customer_id",
            (
                _f("customer_id", "integer", True),
                _f("email", "string", True, "Personal data."),
                _f("first_name", "string", False, "Personal data."),
                _f("last_name", "string", False, "Personal data."),
                _f("phone", "string", False, "Personal data."),
                _f("region_id", "string", True),
                _f("acquisition_channel", "string", True),
                _f("is_marketing_opt_in", "boolean", True),
                _f("created_at", "timestamp", True),
                _f("updated_at", "timestamp", True),
            ),
            "Registered customers. Deleted on request (right to erasure).",
            deletable=True,
        ),
        Entity(
            "products",
            "product_id",
            (
                _f("product_id", "integer", True),
                _f("sku", "string", True),
                _f("product_name", "string", True),
                _f("category", "string", True, "Product line."),
                _f("subcategory", "string", True),
                _f("price", "integer", True, "List price in US cents."),
                _f("is_active", "boolean", True),
                _f("created_at", "timestamp", True),
                _f("updated_at", "timestamp", True),
            ),
            "The product catalogue.",
        ),
        Entity(
            "orders",
            "order_id",
            (
                _f("order_id", "integer", True),
                _f("customer_id", "integer", True),
                _f("region_id", "string", True),
                _f("session_id", "integer", False),
                _f("status", "string", True),
                _f("currency", "string", True),
                _f("channel", "string", True),
                _f("utm_source", "string", False),
                _f("utm_medium", "string", False),
                _f("utm_campaign", "string", False),
                _f("subtotal_cents", "integer", True, "In the order's currency."),
                _f("discount_cents", "integer", True),
                _f("shipping_cents", "integer", True),
                _f("total_cents", "integer", True),
                _f("ordered_at", "timestamp", True),
                _f("updated_at", "timestamp", True),
            ),
            "Orders with their current status. Test and fraudulent orders are deleted.",
            deletable=True,
        ),
        Entity(
            "order_items",
            "order_item_id",
            (
                _f("order_item_id", "integer", True),
                _f("order_id", "integer", True),
                _f("product_id", "integer", True),
                _f("quantity", "integer", True),
                _f("unit_price_cents", "integer", True, "In the order's currency."),
                _f("discount_cents", "integer", True),
                _f("created_at", "timestamp", True),
                _f("updated_at", "timestamp", True),
            ),
            "Lines of orders.",
            deletable=True,
        ),
        Entity(
            "events",
            "event_id",
            (
                _f("event_id", "integer", True),
                _f("session_id", "integer", True),
                _f("customer_id", "integer", False, "Null for anonymous visitors."),
                _f("event_type", "string", True),
                _f("product_id", "integer", False),
                _f("order_id", "integer", False),
                _f("channel", "string", True),
                _f("utm_source", "string", False),
                _f("utm_medium", "string", False),
                _f("utm_campaign", "string", False),
                _f("platform", "string", True, "web or app."),
                _f("occurred_at", "timestamp", True, "When the visitor acted."),
                _f("updated_at", "timestamp", True, "When the event reached the platform."),
            ),
            "Storefront interaction events, grouped in sessions.",
        ),
    )
}

# columns every production table carries besides the entity's fields; never served
INTERNAL_COLUMNS = ("_seq",)

# --- reference data --------------------------------------------------------------------

# region_id: (name, country, currency, weight of traffic)
REGIONS = {
    "us-east": ("US East", "US", "USD", 0.30),
    "us-west": ("US West", "US", "USD", 0.22),
    "uk": ("United Kingdom", "GB", "GBP", 0.16),
    "eu-west": ("EU West", "FR", "EUR", 0.14),
    "eu-central": ("EU Central", "DE", "EUR", 0.18),
}
# units of a currency per US dollar; fixed so that revenue reconciles exactly
FX_PER_USD = {"USD": 1.0, "GBP": 0.79, "EUR": 0.92, "AUD": 1.52}

# product line (category) -> subcategories, with a list-price range in US cents
CATEGORIES = {
    "Apparel": (("Tops", "Bottoms", "Outerwear"), (1500, 12000)),
    "Footwear": (("Running", "Casual"), (4000, 18000)),
    "Electronics": (("Audio", "Wearables"), (2500, 40000)),
    "Home": (("Kitchen", "Decor"), (800, 9000)),
}

# channel: (weight, utm_source, utm_medium); campaigns are drawn for paid channels
CHANNELS = {
    "organic_search": (0.26, "google", "organic"),
    "paid_search": (0.20, "google", "cpc"),
    "social": (0.16, "instagram", "paid_social"),
    "email": (0.12, "newsletter", "email"),
    "affiliate": (0.06, "partner", "affiliate"),
    "direct": (0.20, None, None),
}
CAMPAIGNS = ("spring_sale", "summer_drop", "back_to_school", "black_friday", "brand_always_on")
PAID_CHANNELS = ("paid_search", "social", "email", "affiliate")

ORDER_STATUSES = ("placed", "paid", "shipped", "delivered", "cancelled", "returned")
EVENT_TYPES = ("product_view", "add_to_cart", "checkout", "purchase")
PLATFORMS = ("web", "app")

# funnel: probability of reaching each step from the previous one, in an engaged session
# (a session starts with a product view)
FUNNEL = {"add_to_cart": 0.50, "checkout": 0.70, "purchase": 0.90}

# share of events whose occurred_at comes from the visitor's device clock rather than the
# server's: with a clock skew set (``clock_skew`` of the platform and of ``generate``),
# those run up to that many seconds ahead, so an event can seem to occur after it arrived
DEVICE_CLOCK_SHARE = 0.10

# the real world's imperfections the demo, the benchmark and the reliability harness play
# (``sim serve --late-commits`` / ``--clock-skew``): long transactions committing up to
# this many seconds after their rows were stamped, and device clocks this far ahead
REAL_WORLD_LATE_COMMITS_S = 5.0
REAL_WORLD_CLOCK_SKEW_S = 3.0


def real_world_args() -> list[str]:
    """``sim serve`` arguments for late commits and device clock skew (see above)."""
    return ["--late-commits", f"{REAL_WORLD_LATE_COMMITS_S:g}",
            "--clock-skew", f"{REAL_WORLD_CLOCK_SKEW_S:g}"]

# --- schema evolutions -----------------------------------------------------------------


@dataclass(frozen=True)
class FieldChange:
    """One change to one field of an entity, as announced to data users."""

    entity: str
    field: str
    change: str  # added | removed | combined | type_changed | new_value
    new_type: str | None = None
    old_type: str | None = None
    into: str | None = None  # for `combined`: the field that replaces this one
    note: str = ""


@dataclass(frozen=True)
class Evolution:
    name: str
    title: str
    breaking: bool
    changes: tuple[FieldChange, ...]
    description: str
    # SQL run on the production database (and replayed on the replica) to apply it
    ddl: tuple[str, ...] = field(default_factory=tuple)


NEW_REGION = ("apac", ("Asia Pacific", "AU", "AUD", 0.10))
NEW_CATEGORY = ("Outdoor", (("Camping", "Climbing"), (2000, 30000)))

EVOLUTIONS: dict[str, Evolution] = {
    e.name: e
    for e in (
        Evolution(
            "additive",
            "Device and referrer on events, coupon codes on orders",
            False,
            (
                FieldChange("events", "device_type", "added", "string"),
                FieldChange("events", "referrer", "added", "string"),
                FieldChange("orders", "coupon_code", "added", "string"),
            ),
            "A new storefront release records the visitor's device type and referrer on "
            "every event, and the coupon code used on orders.",
            (
                "ALTER TABLE events ADD COLUMN device_type TEXT",
                "ALTER TABLE events ADD COLUMN referrer TEXT",
                "ALTER TABLE orders ADD COLUMN coupon_code TEXT",
            ),
        ),
        Evolution(
            "expansion",
            "New region Asia Pacific and new product line Outdoor",
            False,
            (
                FieldChange("regions", "region_id", "new_value", note="apac"),
                FieldChange("products", "category", "new_value", note="Outdoor"),
                FieldChange("orders", "currency", "new_value", note="AUD"),
            ),
            "The platform starts selling in Asia Pacific (AUD) and launches the Outdoor "
            "product line.",
        ),
        Evolution(
            "restructure",
            "Customer names combined, product line field, decimal prices",
            True,
            (
                FieldChange("customers", "first_name", "combined", into="full_name"),
                FieldChange("customers", "last_name", "combined", into="full_name"),
                FieldChange("customers", "full_name", "added", "string"),
                FieldChange("products", "category", "combined", into="product_line"),
                FieldChange("products", "subcategory", "combined", into="product_line"),
                FieldChange(
                    "products",
                    "product_line",
                    "added",
                    "string",
                    note="'<category> / <subcategory>'",
                ),
                FieldChange(
                    "products",
                    "price",
                    "type_changed",
                    "decimal",
                    "integer",
                    note="integer US cents become a decimal string of US dollars",
                ),
            ),
            "Customer first and last name are combined into full_name; product category "
            "and subcategory into product_line ('Category / Subcategory'); product price "
            "changes from integer cents to a decimal string of dollars.",
            (
                "ALTER TABLE customers ADD COLUMN full_name TEXT",
                "UPDATE customers SET full_name = trim(coalesce(first_name, '') || ' ' || "
                "coalesce(last_name, ''))",
                "ALTER TABLE customers DROP COLUMN first_name",
                "ALTER TABLE customers DROP COLUMN last_name",
                "ALTER TABLE products ADD COLUMN product_line TEXT",
                "UPDATE products SET product_line = category || ' / ' || subcategory",
                "ALTER TABLE products DROP COLUMN category",
                "ALTER TABLE products DROP COLUMN subcategory",
                "ALTER TABLE products ADD COLUMN price_decimal TEXT",
                "UPDATE products SET price_decimal = printf('%.2f', price / 100.0)",
                "ALTER TABLE products DROP COLUMN price",
                "ALTER TABLE products RENAME COLUMN price_decimal TO price",
            ),
        ),
    )
}


def fields_at(entity: str, applied: list[str] | tuple[str, ...]) -> list[Field]:
    """The entity's fields once the named evolutions are applied (in the given order)."""
    fields = list(ENTITIES[entity].fields)
    for name in applied:
        for ch in EVOLUTIONS[name].changes:
            if ch.entity != entity:
                continue
            if ch.change == "added":
                fields.append(Field(ch.field, ch.new_type or "string", False, ch.note))
            elif ch.change in ("removed", "combined"):
                fields = [f for f in fields if f.name != ch.field]
            elif ch.change == "type_changed":
                fields = [
                    Field(f.name, ch.new_type or f.type, f.required, ch.note)
                    if f.name == ch.field
                    else f
                    for f in fields
                ]
    return fields


def create_table_sql(entity: str) -> str:
    e = ENTITIES[entity]
    cols = []
    for f in e.fields:
        col = f"{f.name} {SQLITE_TYPES[f.type]}"
        if f.name == e.primary_key:
            col += " PRIMARY KEY"
        cols.append(col)
    cols.append("_seq INTEGER NOT NULL DEFAULT 0")
    return f"CREATE TABLE IF NOT EXISTS {entity} ({', '.join(cols)})"
