//! `--selections-key`: one JSON document whose key holds `selections[token][layer] = [ids]`,
//! read as a stream into the [`Builder`].

use std::fmt;
use std::io::BufRead;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{Builder, Routing, Row, BOM};

/// Reads one JSON document whose key `key` holds `selections[token][layer] = [ids]`; other keys
/// are skipped unread.
///
/// # Errors
/// The problem, naming the token and layer where it lies in one, and serde's line and column.
pub fn read_selections(mut input: impl BufRead, key: &str, experts: Option<u32>) -> Result<Routing, String> {
    let mut builder = Builder::new(experts);
    // A byte order mark may start the input.
    if input.fill_buf().map_err(|e| format!("reading: {e}"))?.starts_with(BOM.as_bytes()) {
        input.consume(BOM.len());
    }
    let mut de = serde_json::Deserializer::from_reader(input);
    let found = Document { key, builder: &mut builder }.deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| {
        if e.is_syntax() {
            // More JSON after the document: JSON lines, most likely.
            format!(
                "more JSON after the document, at line {} (--selections-key reads one JSON document; for JSON \
                 lines, one record per token and layer, give --layer-key, --ids-key and --token-key)",
                e.line()
            )
        } else {
            format!("after the document: {e}")
        }
    })?;
    if !found {
        return Err(format!("the document has no \"{key}\" key"));
    }
    builder.finish(|r| format!("token {}, layer {}", r.token, r.layer))
}

/// The top-level object: finds `key` and reads its selections into `builder`.
struct Document<'a> {
    key: &'a str,
    builder: &'a mut Builder,
}

impl<'de> DeserializeSeed<'de> for Document<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Document<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a JSON object with a \"{}\" key", self.key)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(name) = map.next_key::<String>()? {
            if name != self.key {
                map.next_value::<IgnoredAny>()?;
            } else if found {
                return Err(de::Error::custom(format!("\"{name}\" is given twice")));
            } else {
                map.next_value_seed(Tokens { builder: &mut *self.builder })?;
                found = true;
            }
        }
        Ok(found)
    }
}

/// `selections`: an array of tokens.
struct Tokens<'a> {
    builder: &'a mut Builder,
}

impl<'de> DeserializeSeed<'de> for Tokens<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Tokens<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of tokens")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut layers_of_first = None;
        let mut token = 0u64;
        while let Some(layers) = seq.next_element_seed(Layers { token, builder: &mut *self.builder })? {
            match layers_of_first {
                None => layers_of_first = Some(layers),
                Some(first) if first != layers => {
                    return Err(de::Error::custom(format!("token {token} has {layers} layers, token 0 has {first}")));
                }
                Some(_) => {}
            }
            token = token.saturating_add(1);
        }
        Ok(())
    }
}

/// One token: an array of layers, each an array of ids. Gives the number of layers.
struct Layers<'a> {
    token: u64,
    builder: &'a mut Builder,
}

impl<'de> DeserializeSeed<'de> for Layers<'_> {
    type Value = u32;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<u32, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Layers<'_> {
    type Value = u32;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token {}: an array of layers, each an array of expert ids", self.token)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u32, A::Error> {
        let mut layer = 0u32;
        let token = self.token;
        while let Some(ids) = seq.next_element::<Value>()? {
            let at = format!("token {token}, layer {layer}");
            let ids = ids.as_array().ok_or_else(|| de::Error::custom(format!("{at}: not an array of expert ids")))?;
            let row = Row { sequence: 0, token, layer, line: 0, start: 0 };
            self.builder.push(row, ids, &at).map_err(de::Error::custom)?;
            layer = layer.checked_add(1).ok_or_else(|| de::Error::custom(format!("token {token}: too many layers")))?;
        }
        Ok(layer)
    }
}
