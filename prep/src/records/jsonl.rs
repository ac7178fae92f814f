//! Pulling the text field out of one JSON line without building the whole object: a serde seed
//! walks the dotted `--text-field` path and ignores every other value.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

/// What a JSON line holds at the text path.
#[derive(Debug, PartialEq)]
pub enum Field<'a> {
    Text(Cow<'a, str>),
    /// Present but not a string: the JSON type found.
    NotString(&'static str),
    Missing,
}

/// Parses one line. `Err` is a malformed-JSON message.
pub fn extract<'a>(line: &'a [u8], path: &[String]) -> Result<Field<'a>, String> {
    let mut de = serde_json::Deserializer::from_slice(line);
    let field = PathSeed(path)
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(field)
}

struct PathSeed<'p>(&'p [String]);

impl<'de> DeserializeSeed<'de> for PathSeed<'_> {
    type Value = Field<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        if self.0.is_empty() {
            d.deserialize_any(LeafVisitor)
        } else {
            d.deserialize_any(ObjectVisitor(self.0))
        }
    }
}

struct ObjectVisitor<'p>(&'p [String]);

impl<'de> Visitor<'de> for ObjectVisitor<'_> {
    type Value = Field<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = Field::Missing;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == self.0[0].as_str() {
                found = map.next_value_seed(PathSeed(&self.0[1..]))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
    // Anything else along the path means the field is not there (for a nested path) — or, at
    // the top level, a line that is not an object, which the caller reports as missing.
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Field::Missing)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Field::Missing)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Field::Missing)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Field::Missing)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Field::Missing)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Field::Missing)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::Missing)
    }
}

struct LeafVisitor;

impl<'de> Visitor<'de> for LeafVisitor {
    type Value = Field<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Field::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Field::Text(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Field::Text(Cow::Owned(v)))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Field::NotString("boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Field::NotString("number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Field::NotString("number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Field::NotString("number"))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Field::NotString("null"))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::NotString("array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::NotString("object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Vec<String> {
        p.split('.').map(String::from).collect()
    }

    #[test]
    fn finds_top_level_and_nested_fields() {
        let line = br#"{"id": 3, "text": "hello", "meta": {"body": {"en": "hi\nthere"}}}"#;
        assert_eq!(
            extract(line, &path("text")).unwrap(),
            Field::Text("hello".into())
        );
        assert_eq!(
            extract(line, &path("meta.body.en")).unwrap(),
            Field::Text("hi\nthere".into())
        );
        assert_eq!(
            extract(line, &path("meta.body.fr")).unwrap(),
            Field::Missing
        );
        assert_eq!(
            extract(line, &path("id")).unwrap(),
            Field::NotString("number")
        );
        assert_eq!(
            extract(line, &path("meta")).unwrap(),
            Field::NotString("object")
        );
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert!(extract(br#"{"text": "unterminated}"#, &path("text")).is_err());
        assert!(extract(br#"{"text": "a"} trailing"#, &path("text")).is_err());
        assert_eq!(extract(br#"null"#, &path("text")).unwrap(), Field::Missing);
        assert_eq!(
            extract(br#"{"text": null}"#, &path("text")).unwrap(),
            Field::NotString("null")
        );
    }
}
