// @generated automatically by Diesel CLI.

diesel::table! {
    todos (id) {
        id -> Int8,
        title -> Text,
        details -> Jsonb,
        tags -> Array<Nullable<Text>>,
        created_at -> Timestamptz,
        done_at -> Nullable<Timestamptz>,
    }
}
