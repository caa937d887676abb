//! A small map by name, kept as one sorted vector.
//!
//! A twin holds a map of features and, in each, a map of properties: a few entries each. A
//! `BTreeMap` gives every one of them a node with room for eleven entries, which made the
//! property maps the largest part of a twin (about 5 KiB of a 20-property machine). One vector
//! holds exactly the entries, in the same order, and serialises as the same map.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Index;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Entries by name, in name order; a name appears once.
#[derive(Clone, PartialEq)]
pub struct NameMap<V> {
    entries: Vec<(String, V)>,
}

impl<V> Default for NameMap<V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<V> NameMap<V> {
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.entries
            .binary_search_by(|(key, _)| key.as_str().cmp(name))
    }

    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&V> {
        let at = self.position(name).ok()?;
        Some(&self.entries[at].1)
    }

    /// The entry named `name`, to change.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut V> {
        let at = self.position(name).ok()?;
        Some(&mut self.entries[at].1)
    }

    /// Whether an entry is named `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    /// Sets the entry named `name`; the value it replaced, if any.
    pub fn insert(&mut self, name: String, value: V) -> Option<V> {
        match self.position(&name) {
            Ok(at) => Some(std::mem::replace(&mut self.entries[at].1, value)),
            Err(at) => {
                self.entries.insert(at, (name, value));
                None
            }
        }
    }

    /// The entry named `name`, made by `make` first when there is none.
    pub fn get_or_insert_with(&mut self, name: &str, make: impl FnOnce() -> V) -> &mut V {
        let at = match self.position(name) {
            Ok(at) => at,
            Err(at) => {
                self.entries.insert(at, (name.to_owned(), make()));
                at
            }
        };
        &mut self.entries[at].1
    }

    /// Entries in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.entries.iter().map(|(name, value)| (name, value))
    }

    /// Values in name order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, value)| value)
    }

    /// Values in name order, to change.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.iter_mut().map(|(_, value)| value)
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<V> FromIterator<(String, V)> for NameMap<V> {
    /// Of two entries with one name, the later stays (as when inserted in turn).
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let mut map = Self::default();
        for (name, value) in iter {
            map.insert(name, value);
        }
        map.entries.shrink_to_fit();
        map
    }
}

impl<V, const N: usize> From<[(String, V); N]> for NameMap<V> {
    fn from(entries: [(String, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl<V> Index<&str> for NameMap<V> {
    type Output = V;

    /// Panics when there is no such entry, as `BTreeMap` does: for tests and known names.
    fn index(&self, name: &str) -> &V {
        match self.get(name) {
            Some(value) => value,
            None => panic!("no entry named {name:?}"),
        }
    }
}

impl<'a, V> IntoIterator for &'a NameMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, V)>,
        fn(&'a (String, V)) -> (&'a String, &'a V),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(name, value)| (name, value))
    }
}

impl<V: fmt::Debug> fmt::Debug for NameMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V: Serialize> Serialize for NameMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (name, value) in &self.entries {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for NameMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for Entries<V> {
            type Value = NameMap<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map by name")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(access.size_hint().unwrap_or(0).min(1024));
                while let Some(entry) = access.next_entry::<String, V>()? {
                    entries.push(entry);
                }
                Ok(entries.into_iter().collect())
            }
        }

        deserializer.deserialize_map(Entries(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::NameMap;

    #[test]
    fn entries_stay_in_name_order_and_a_name_is_there_once() {
        let mut map = NameMap::default();
        assert_eq!(map.insert("speed".to_owned(), 1), None);
        assert_eq!(map.insert("axis".to_owned(), 2), None);
        assert_eq!(map.insert("speed".to_owned(), 3), Some(1));
        *map.get_or_insert_with("power", || 0) += 5;
        *map.get_or_insert_with("power", || 100) += 5;
        let names: Vec<&str> = map.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["axis", "power", "speed"]);
        assert_eq!(
            (map["power"], map.get("speed"), map.get("none")),
            (10, Some(&3), None)
        );
        assert!(map.contains_key("axis") && !map.contains_key("ax"));
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn it_reads_and_writes_the_same_json_and_postcard_as_a_btree_map() {
        let tree: std::collections::BTreeMap<String, f64> = [
            ("z".to_owned(), 1.5),
            ("a".to_owned(), -2.0),
            ("m".to_owned(), 0.0),
        ]
        .into();
        let map: NameMap<f64> = tree.clone().into_iter().collect();
        assert_eq!(
            serde_json::to_string(&map).expect("json"),
            serde_json::to_string(&tree).expect("json")
        );
        assert_eq!(
            postcard::to_allocvec(&map).expect("postcard"),
            postcard::to_allocvec(&tree).expect("postcard")
        );
        let back: NameMap<f64> =
            serde_json::from_str(r#"{"m":0.0,"z":9.0,"a":-2.0,"z":1.5}"#).expect("json");
        assert_eq!(back, map, "sorted, the later of two equal names stays");
        let bytes = postcard::to_allocvec(&tree).expect("postcard");
        assert_eq!(
            postcard::from_bytes::<NameMap<f64>>(&bytes).expect("postcard"),
            map
        );
        assert!(serde_json::from_str::<NameMap<f64>>("[1]").is_err());
    }
}
