//! Deserializing a document past one field nobody reads: the value at a path of object keys
//! is skipped as JSON is read (its syntax still checked) instead of being built and dropped.
//!
//! A pod's `metadata.managedFields` are trees of `serde_json::Value` maps that the webhook
//! never looks at; building them was a quarter of the instructions of decoding a review.
//! [`Pruned`] wraps a deserializer and hands every visitor along the path a wrapper that
//! goes one key deeper; everything off the path is passed through untouched.

use std::borrow::Cow;
use std::fmt;

use serde::de::value::CowStrDeserializer;
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess, SeqAccess, Visitor,
};

/// `inner`, with the value at `path` (object keys, outermost first) left out.
pub struct Pruned<'p, D> {
    inner: D,
    path: &'p [&'p str],
}

impl<'p, D> Pruned<'p, D> {
    /// Wraps `inner`; `path` must name at least one key.
    pub fn new(inner: D, path: &'p [&'p str]) -> Self {
        Pruned { inner, path }
    }
}

/// Forwards `deserialize_*` methods: their arguments as they came, the visitor wrapped.
macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*))*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            self.inner.$method($($arg,)* Along { visitor, path: self.path })
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Pruned<'_, D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any() deserialize_bool() deserialize_i8() deserialize_i16()
        deserialize_i32() deserialize_i64() deserialize_i128() deserialize_u8()
        deserialize_u16() deserialize_u32() deserialize_u64() deserialize_u128()
        deserialize_f32() deserialize_f64() deserialize_char() deserialize_str()
        deserialize_string() deserialize_bytes() deserialize_byte_buf() deserialize_option()
        deserialize_unit() deserialize_seq() deserialize_map() deserialize_identifier()
        deserialize_ignored_any()
        deserialize_unit_struct(name: &'static str)
        deserialize_newtype_struct(name: &'static str)
        deserialize_tuple(len: usize)
        deserialize_tuple_struct(name: &'static str, len: usize)
        deserialize_struct(name: &'static str, fields: &'static [&'static str])
        deserialize_enum(name: &'static str, variants: &'static [&'static str])
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A visitor of a value on the path: an object it visits skips or descends into the path's
/// first key; an option or newtype passes the path on to its content.
struct Along<'p, V> {
    visitor: V,
    path: &'p [&'p str],
}

/// Forwards `visit_*` methods of plain values.
macro_rules! forward_visit {
    ($($method:ident($ty:ty))*) => {$(
        fn $method<E: de::Error>(self, value: $ty) -> Result<V::Value, E> {
            self.visitor.$method(value)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Along<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    forward_visit! {
        visit_bool(bool) visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64)
        visit_i128(i128) visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64)
        visit_u128(u128) visit_f32(f32) visit_f64(f64) visit_char(char) visit_str(&str)
        visit_borrowed_str(&'de str) visit_string(String) visit_bytes(&[u8])
        visit_borrowed_bytes(&'de [u8]) visit_byte_buf(Vec<u8>)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<V::Value, D::Error> {
        self.visitor.visit_some(Pruned {
            inner,
            path: self.path,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, inner: D) -> Result<V::Value, D::Error> {
        self.visitor.visit_newtype_struct(Pruned {
            inner,
            path: self.path,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_map(PrunedMap {
            map,
            path: self.path,
            descend: false,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_enum(data)
    }
}

/// An object on the path: its entry named by the path's last key is skipped; the value of
/// the path's next key is read one level deeper.
struct PrunedMap<'p, A> {
    map: A,
    path: &'p [&'p str],
    /// The key just read is the path's first and the path goes on below it.
    descend: bool,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for PrunedMap<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return self.map.next_key_seed(seed);
        };
        loop {
            let Some(key) = self.map.next_key_seed(KeyText)? else {
                return Ok(None);
            };
            if key == *first && rest.is_empty() {
                self.map.next_value::<IgnoredAny>()?;
                continue;
            }
            self.descend = key == *first;
            return seed.deserialize(CowStrDeserializer::new(key)).map(Some);
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        if std::mem::take(&mut self.descend) {
            self.map.next_value_seed(Deeper {
                seed,
                path: &self.path[1..],
            })
        } else {
            self.map.next_value_seed(seed)
        }
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

/// The seed of a value on the path, handed the rest of the path.
struct Deeper<'p, S> {
    seed: S,
    path: &'p [&'p str],
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Deeper<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, inner: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Pruned {
            inner,
            path: self.path,
        })
    }
}

/// An object key as text, borrowed from the input when it has no escapes.
struct KeyText;

impl<'de> DeserializeSeed<'de> for KeyText {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, inner: D) -> Result<Self::Value, D::Error> {
        inner.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyText {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(key))
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(key.to_owned()))
    }

    fn visit_string<E: de::Error>(self, key: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(key))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::{Value, json};

    use super::*;

    fn pruned<'de, T: Deserialize<'de>>(json: &'de str, path: &[&str]) -> serde_json::Result<T> {
        let mut de = serde_json::Deserializer::from_str(json);
        let value = T::deserialize(Pruned::new(&mut de, path))?;
        de.end()?;
        Ok(value)
    }

    #[test]
    fn only_the_value_at_the_path_is_left_out() {
        let json = r#"{"a": {"b": 1, "skip": [1, {"x": 3}], "c": "d", "e": {"skip": 2}},
                       "skip": 5, "f": [{"a": {"skip": 6}}]}"#;
        let value: Value = pruned(json, &["a", "skip"]).expect("valid JSON");
        assert_eq!(
            value,
            json!({"a": {"b": 1, "c": "d", "e": {"skip": 2}}, "skip": 5, "f": [{"a": {"skip": 6}}]})
        );
    }

    #[test]
    fn a_key_written_with_escapes_is_the_same_key() {
        let value: Value =
            pruned(r#"{"a": {"sk\u0069p": [1], "k": true}}"#, &["a", "skip"]).expect("valid");
        assert_eq!(value, json!({"a": {"k": true}}));
    }

    #[test]
    fn the_skipped_value_must_still_be_valid_json() {
        let error = pruned::<Value>(r#"{"a": {"skip": [1, }, "k": 1}}"#, &["a", "skip"])
            .expect_err("broken JSON inside the skipped value");
        assert!(error.is_syntax(), "{error}");
    }

    #[test]
    fn typed_fields_options_and_newtypes_along_the_path_are_read_as_without_it() {
        #[derive(Debug, PartialEq, Deserialize)]
        struct Outer {
            name: String,
            inner: Option<Wrapper>,
            other: Option<Vec<u8>>,
        }
        #[derive(Debug, PartialEq, Deserialize)]
        struct Wrapper(Inner);
        #[derive(Debug, PartialEq, Deserialize)]
        struct Inner {
            keep: i64,
            skip: Option<Value>,
        }
        let json =
            r#"{"name": "n", "inner": {"keep": -3, "skip": {"deep": [null]}}, "other": [7]}"#;
        let outer: Outer = pruned(json, &["inner", "skip"]).expect("valid");
        assert_eq!(
            outer,
            Outer {
                name: "n".into(),
                inner: Some(Wrapper(Inner {
                    keep: -3,
                    skip: None
                })),
                other: Some(vec![7]),
            }
        );
        let plain: Outer = serde_json::from_str(json).expect("valid");
        assert_eq!(
            plain.inner.and_then(|w| w.0.skip),
            Some(json!({"deep": [null]}))
        );
    }

    #[test]
    fn errors_off_the_path_are_the_ones_serde_json_gives() {
        type Doc = std::collections::BTreeMap<String, std::collections::BTreeMap<String, u8>>;
        let json = r#"{"a": {"skip": 1, "n": 300}}"#;
        let with = pruned::<Doc>(json, &["a", "skip"]).expect_err("300 is not a u8");
        let without = serde_json::from_str::<Doc>(json).expect_err("300 is not a u8");
        assert_eq!(with.to_string(), without.to_string());
    }
}
