//! A parse tree every node of which can be visited, with its type name.
//!
//! libpg_query's tree (pg_query's protobuf types) has ~270 node types. A hand-written walker
//! that forgets one (an `ARRAY[…]`, a JSON constructor, a `COLLATE`) would miss the
//! function called inside it: a fail-open hole in the gate. Instead the tree is turned into
//! this generic form through its `serde::Serialize` implementation, which covers every
//! field of every node by construction, keeping the struct names (`RangeVar`, `FuncCall`, …)
//! that the facts are read from.

use serde::ser::{self, Serialize};

#[derive(Debug, Clone, PartialEq)]
pub enum Tree {
    Struct {
        name: &'static str,
        fields: Vec<(&'static str, Tree)>,
    },
    Seq(Vec<Tree>),
    Str(String),
    Int(i64),
    Bool(bool),
    Null,
}

impl Tree {
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Self, Unsupported> {
        value.serialize(TreeSerializer)
    }

    /// A field of a struct node.
    pub fn field(&self, key: &str) -> Option<&Tree> {
        match self {
            Tree::Struct { fields, .. } => fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn name(&self) -> Option<&'static str> {
        match self {
            Tree::Struct { name, .. } => Some(name),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Tree::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> bool {
        matches!(self, Tree::Bool(true))
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Tree::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// Present and not empty: `Null`, an empty list and an empty string count as absent.
    pub fn is_present(&self) -> bool {
        match self {
            Tree::Null => false,
            Tree::Seq(items) => !items.is_empty(),
            Tree::Str(s) => !s.is_empty(),
            _ => true,
        }
    }

    /// Child trees, in field order.
    pub fn children(&self) -> Box<dyn Iterator<Item = (&'static str, &Tree)> + '_> {
        match self {
            Tree::Struct { fields, .. } => Box::new(fields.iter().map(|(k, v)| (*k, v))),
            Tree::Seq(items) => Box::new(items.iter().map(|v| ("", v))),
            _ => Box::new(std::iter::empty()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("parse tree not representable: {0}")]
pub struct Unsupported(String);

impl ser::Error for Unsupported {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Unsupported(msg.to_string())
    }
}

struct TreeSerializer;

pub struct SeqBuilder(Vec<Tree>);
pub struct StructBuilder {
    name: &'static str,
    fields: Vec<(&'static str, Tree)>,
}

type R = Result<Tree, Unsupported>;

impl ser::Serializer for TreeSerializer {
    type Ok = Tree;
    type Error = Unsupported;
    type SerializeSeq = SeqBuilder;
    type SerializeTuple = SeqBuilder;
    type SerializeTupleStruct = SeqBuilder;
    type SerializeTupleVariant = SeqBuilder;
    type SerializeMap = ser::Impossible<Tree, Unsupported>;
    type SerializeStruct = StructBuilder;
    type SerializeStructVariant = StructBuilder;

    fn serialize_bool(self, v: bool) -> R {
        Ok(Tree::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> R {
        Ok(Tree::Int(v.into()))
    }
    fn serialize_i16(self, v: i16) -> R {
        Ok(Tree::Int(v.into()))
    }
    fn serialize_i32(self, v: i32) -> R {
        Ok(Tree::Int(v.into()))
    }
    fn serialize_i64(self, v: i64) -> R {
        Ok(Tree::Int(v))
    }
    fn serialize_u8(self, v: u8) -> R {
        Ok(Tree::Int(v.into()))
    }
    fn serialize_u16(self, v: u16) -> R {
        Ok(Tree::Int(v.into()))
    }
    fn serialize_u32(self, v: u32) -> R {
        Ok(Tree::Int(v.into()))
    }
    fn serialize_u64(self, v: u64) -> R {
        Ok(Tree::Int(v as i64))
    }
    fn serialize_f32(self, _v: f32) -> R {
        Ok(Tree::Null)
    }
    fn serialize_f64(self, _v: f64) -> R {
        Ok(Tree::Null)
    }
    fn serialize_char(self, v: char) -> R {
        Ok(Tree::Str(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> R {
        Ok(Tree::Str(v.to_owned()))
    }
    fn serialize_bytes(self, _v: &[u8]) -> R {
        Ok(Tree::Null)
    }
    fn serialize_none(self) -> R {
        Ok(Tree::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> R {
        value.serialize(self)
    }
    fn serialize_unit(self) -> R {
        Ok(Tree::Null)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> R {
        Ok(Tree::Null)
    }
    fn serialize_unit_variant(self, _: &'static str, index: u32, _: &'static str) -> R {
        Ok(Tree::Int(index.into()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> R {
        value.serialize(self)
    }
    // The `node` oneof: `Node::FuncCall(Box<FuncCall>)` is the FuncCall struct itself.
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> R {
        value.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqBuilder, Unsupported> {
        Ok(SeqBuilder(Vec::with_capacity(len.unwrap_or(0))))
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqBuilder, Unsupported> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        len: usize,
    ) -> Result<SeqBuilder, Unsupported> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        len: usize,
    ) -> Result<SeqBuilder, Unsupported> {
        self.serialize_seq(Some(len))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        Err(Unsupported("maps do not occur in parse trees".into()))
    }
    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<StructBuilder, Unsupported> {
        Ok(StructBuilder {
            name,
            fields: Vec::with_capacity(len),
        })
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<StructBuilder, Unsupported> {
        self.serialize_struct(variant, len)
    }
}

impl SeqBuilder {
    fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.0.push(value.serialize(TreeSerializer)?);
        Ok(())
    }
}

impl ser::SerializeSeq for SeqBuilder {
    type Ok = Tree;
    type Error = Unsupported;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.push(value)
    }
    fn end(self) -> R {
        Ok(Tree::Seq(self.0))
    }
}

impl ser::SerializeTuple for SeqBuilder {
    type Ok = Tree;
    type Error = Unsupported;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.push(value)
    }
    fn end(self) -> R {
        Ok(Tree::Seq(self.0))
    }
}

impl ser::SerializeTupleStruct for SeqBuilder {
    type Ok = Tree;
    type Error = Unsupported;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.push(value)
    }
    fn end(self) -> R {
        Ok(Tree::Seq(self.0))
    }
}

impl ser::SerializeTupleVariant for SeqBuilder {
    type Ok = Tree;
    type Error = Unsupported;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.push(value)
    }
    fn end(self) -> R {
        Ok(Tree::Seq(self.0))
    }
}

impl ser::SerializeStruct for StructBuilder {
    type Ok = Tree;
    type Error = Unsupported;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        self.fields.push((key, value.serialize(TreeSerializer)?));
        Ok(())
    }
    fn end(mut self) -> R {
        // `Node { node: Some(FuncCall(…)) }` is just the FuncCall.
        if self.name == "Node" && self.fields.len() == 1 && self.fields[0].0 == "node" {
            if let Some((_, inner)) = self.fields.pop() {
                return Ok(inner);
            }
        }
        Ok(Tree::Struct {
            name: self.name,
            fields: self.fields,
        })
    }
}

impl ser::SerializeStructVariant for StructBuilder {
    type Ok = Tree;
    type Error = Unsupported;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        ser::SerializeStruct::serialize_field(self, key, value)
    }
    fn end(self) -> R {
        ser::SerializeStruct::end(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_struct_names_of_every_node() {
        let parsed = pg_query::parse("SELECT ARRAY[pg_read_file('x')] FROM s.t", 0).unwrap();
        let tree = Tree::of(&parsed.protobuf).unwrap();
        let mut names = Vec::new();
        fn collect(tree: &Tree, names: &mut Vec<&'static str>) {
            if let Some(name) = tree.name() {
                names.push(name);
            }
            for (_, child) in tree.children() {
                collect(child, names);
            }
        }
        collect(&tree, &mut names);
        for expected in ["SelectStmt", "AArrayExpr", "FuncCall", "RangeVar"] {
            assert!(names.contains(&expected), "{expected} not in {names:?}");
        }
    }
}
