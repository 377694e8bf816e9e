// @generated automatically by Diesel CLI.

diesel::table! {
    posts (id) {
        id -> Int8,
        author_id -> Int8,
        title -> Text,
        body -> Text,
        published -> Bool,
        created_at -> Timestamp,
        published_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    users (id) {
        id -> Int8,
        email -> Text,
        display_name -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::joinable!(posts -> users (author_id));

diesel::allow_tables_to_appear_in_same_query!(posts, users,);
