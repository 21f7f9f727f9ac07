//! The message tree: segments, fields, repetitions, components, sub-components.
//!
//! Values are stored **unescaped** and **normalized**: trailing empty fields, repetitions,
//! components and sub-components are not kept, because HL7 gives them no meaning and an
//! encoder drops them. [`crate::parse`] always returns a normalized message; build messages by
//! hand with the constructors below and call [`Message::normalized`] before comparing.
//!
//! Storage is shaped for what messages hold: nearly every field has one repetition and most
//! components one sub-component, so [`Parts`] keeps its first item inline, and most values
//! are short, so they are [`CompactString`]s (up to 24 bytes inline). Parsing a typical
//! message thus allocates about once per segment (its name and its fields) plus once per
//! composite value, instead of several times per value.

use compact_str::CompactString;
use smallvec::SmallVec;

/// The separators a message declares in MSH-1 and MSH-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: char,
    pub subcomponent: char,
    /// v2.7+ truncation character (5th encoding character), absent before.
    pub truncation: Option<char>,
}

impl Default for Delimiters {
    /// `|^~\&`, what nearly every sender uses.
    fn default() -> Self {
        Delimiters {
            field: '|',
            component: '^',
            repetition: '~',
            escape: '\\',
            subcomponent: '&',
            truncation: None,
        }
    }
}

impl Delimiters {
    /// MSH-2 as written on the wire.
    pub fn encoding_characters(&self) -> String {
        let mut text: String = [
            self.component,
            self.repetition,
            self.escape,
            self.subcomponent,
        ]
        .into_iter()
        .collect();
        text.extend(self.truncation);
        text
    }
}

/// A whole HL7 v2 message. The first segment is MSH.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub delimiters: Delimiters,
    pub segments: Vec<Segment>,
}

/// One segment. `fields[0]` is field 1 in HL7 numbering; for MSH, `fields[0]` is MSH-1
/// (the field separator) and `fields[1]` MSH-2 (the encoding characters), so that
/// [`Segment::field`] numbers MSH fields as the standard does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Segment {
    pub name: String,
    pub fields: Vec<Field>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Field {
    pub repetitions: Parts<Repetition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Repetition {
    pub components: Parts<Component>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Component {
    /// Values of up to 24 bytes are stored inline (no heap allocation); read them as `&str`.
    pub subcomponents: Parts<CompactString>,
}

/// The repetitions of a field, the components of a repetition or the sub-components of a
/// component: a list that holds its first item inline, because nearly every field has one
/// repetition, most components one sub-component, and a message has thousands of them (one
/// heap allocation each would cost more than the parsing itself).
///
/// Read it as a slice (it derefs to `[T]`: `len`, indexing, `iter`, `first`, `for x in
/// &parts`); build it from a `Vec`, an array or an iterator (`vec.into()`, `collect()`).
#[derive(Clone, PartialEq, Eq)]
pub struct Parts<T>(SmallVec<[T; 1]>);

impl<T> Parts<T> {
    pub fn new() -> Self {
        Parts(SmallVec::new())
    }

    /// A list of one item, without allocating.
    pub fn one(item: T) -> Self {
        Parts(SmallVec::from_buf([item]))
    }

    pub fn push(&mut self, item: T) {
        // Leaving the inline slot: go straight to 4 (one allocation) instead of 2 then 4, since
        // a value with 2 components usually has 3 or more (code^text^system, XCN, XAD...).
        if self.0.len() == 1 && !self.0.spilled() {
            self.0.reserve(3);
        }
        self.0.push(item);
    }

    pub fn pop(&mut self) -> Option<T> {
        self.0.pop()
    }

    pub fn as_slice(&self) -> &[T] {
        &self.0
    }

    /// Drops the trailing items that `is_empty` says are empty.
    pub(crate) fn trim_trailing(&mut self, is_empty: impl Fn(&T) -> bool) {
        while self.0.last().is_some_and(&is_empty) {
            self.0.pop();
        }
    }
}

impl<T> Default for Parts<T> {
    fn default() -> Self {
        Parts::new()
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Parts<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl<T> std::ops::Deref for Parts<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Parts<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.0
    }
}

impl<T> FromIterator<T> for Parts<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        Parts(items.into_iter().collect())
    }
}

impl<T> Extend<T> for Parts<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, items: I) {
        self.0.extend(items);
    }
}

impl<T, U: Into<T>> From<Vec<U>> for Parts<T> {
    fn from(items: Vec<U>) -> Self {
        items.into_iter().map(Into::into).collect()
    }
}

impl<T, U: Into<T>, const N: usize> From<[U; N]> for Parts<T> {
    fn from(items: [U; N]) -> Self {
        items.into_iter().map(Into::into).collect()
    }
}

impl<T> IntoIterator for Parts<T> {
    type Item = T;
    type IntoIter = smallvec::IntoIter<[T; 1]>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a, T> IntoIterator for &'a Parts<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'a, T> IntoIterator for &'a mut Parts<T> {
    type Item = &'a mut T;
    type IntoIter = std::slice::IterMut<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter_mut()
    }
}

impl<T: PartialEq<U>, U> PartialEq<[U]> for Parts<T> {
    fn eq(&self, other: &[U]) -> bool {
        self.0[..] == other[..]
    }
}

impl<T: PartialEq<U>, U> PartialEq<&[U]> for Parts<T> {
    fn eq(&self, other: &&[U]) -> bool {
        self.0[..] == other[..]
    }
}

impl<T: PartialEq<U>, U, const N: usize> PartialEq<[U; N]> for Parts<T> {
    fn eq(&self, other: &[U; N]) -> bool {
        self.0[..] == other[..]
    }
}

impl<T: PartialEq<U>, U> PartialEq<Vec<U>> for Parts<T> {
    fn eq(&self, other: &Vec<U>) -> bool {
        self.0[..] == other[..]
    }
}

impl Message {
    /// The first segment with this name.
    pub fn segment(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.name == name)
    }

    /// Every segment with this name, in message order.
    pub fn segments<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Segment> + 'a {
        self.segments.iter().filter(move |s| s.name == name)
    }

    fn msh_value(&self, field: usize, component: usize) -> &str {
        self.segment("MSH")
            .and_then(|msh| msh.field(field))
            .and_then(|f| f.component(component))
            .map_or("", Component::value)
    }

    /// MSH-9 as (message code, trigger event, message structure), e.g. `("ADT", "A01", "ADT_A01")`.
    pub fn message_type(&self) -> (&str, &str, &str) {
        (
            self.msh_value(9, 1),
            self.msh_value(9, 2),
            self.msh_value(9, 3),
        )
    }

    /// MSH-10, echoed in MSA-2 of the acknowledgement.
    pub fn control_id(&self) -> &str {
        self.msh_value(10, 1)
    }

    /// MSH-11 processing id (`P`, `T`, `D`).
    pub fn processing_id(&self) -> &str {
        self.msh_value(11, 1)
    }

    /// MSH-12 version id, e.g. `2.5.1`.
    pub fn version(&self) -> &str {
        self.msh_value(12, 1)
    }

    /// MSH-3, first component.
    pub fn sending_application(&self) -> &str {
        self.msh_value(3, 1)
    }

    /// MSH-4, first component.
    pub fn sending_facility(&self) -> &str {
        self.msh_value(4, 1)
    }

    /// MSH-18 (first repetition), empty when the sender declared none (ASCII).
    pub fn charset(&self) -> &str {
        self.msh_value(18, 1)
    }

    /// The same message without trailing empty values, as [`crate::parse`] would return it.
    pub fn normalized(&self) -> Message {
        Message {
            delimiters: self.delimiters,
            segments: self.segments.iter().map(Segment::normalized).collect(),
        }
    }
}

impl Segment {
    pub fn new(name: impl Into<String>, fields: Vec<Field>) -> Segment {
        Segment {
            name: name.into(),
            fields,
        }
    }

    /// Field `number` in HL7 numbering (1-based; MSH-1 is the field separator).
    pub fn field(&self, number: usize) -> Option<&Field> {
        self.fields.get(number.checked_sub(1)?)
    }

    /// First value of field `number`, or `""` when absent.
    pub fn value(&self, number: usize) -> &str {
        self.field(number).map_or("", Field::first_value)
    }

    pub fn normalized(&self) -> Segment {
        let mut fields: Vec<Field> = self.fields.iter().map(Field::normalized).collect();
        trim_trailing(&mut fields, Field::is_empty);
        Segment {
            name: self.name.clone(),
            fields,
        }
    }
}

impl Field {
    /// A field holding a single value.
    pub fn from_value(value: impl Into<String>) -> Field {
        Field::from_components([value])
    }

    /// A field with one repetition made of these components.
    pub fn from_components<S: Into<String>>(components: impl IntoIterator<Item = S>) -> Field {
        Field {
            repetitions: Parts::from([Repetition {
                components: components
                    .into_iter()
                    .map(|c| Component {
                        subcomponents: Parts::from([CompactString::from(c.into())]),
                    })
                    .collect(),
            }]),
        }
        .normalized()
    }

    /// Component `number` (1-based) of the first repetition.
    pub fn component(&self, number: usize) -> Option<&Component> {
        self.repetitions.first()?.component(number)
    }

    /// The first sub-component of the first component of the first repetition, or `""`.
    pub fn first_value(&self) -> &str {
        self.repetitions.first().map_or("", Repetition::first_value)
    }

    pub fn is_empty(&self) -> bool {
        self.repetitions.iter().all(Repetition::is_empty)
    }

    pub fn normalized(&self) -> Field {
        let mut repetitions: Parts<Repetition> = self
            .repetitions
            .iter()
            .map(Repetition::normalized)
            .collect();
        repetitions.trim_trailing(Repetition::is_empty);
        Field { repetitions }
    }
}

impl Repetition {
    /// Component `number` (1-based).
    pub fn component(&self, number: usize) -> Option<&Component> {
        self.components.get(number.checked_sub(1)?)
    }

    pub fn first_value(&self) -> &str {
        self.components.first().map_or("", Component::value)
    }

    pub fn is_empty(&self) -> bool {
        self.components.iter().all(Component::is_empty)
    }

    pub fn normalized(&self) -> Repetition {
        let mut components: Parts<Component> =
            self.components.iter().map(Component::normalized).collect();
        components.trim_trailing(Component::is_empty);
        Repetition { components }
    }
}

impl Component {
    /// The first sub-component, or `""`.
    pub fn value(&self) -> &str {
        self.subcomponents.first().map_or("", CompactString::as_str)
    }

    /// Sub-component `number` (1-based).
    pub fn subcomponent(&self, number: usize) -> Option<&str> {
        self.subcomponents
            .get(number.checked_sub(1)?)
            .map(CompactString::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.subcomponents.iter().all(CompactString::is_empty)
    }

    pub fn normalized(&self) -> Component {
        let mut subcomponents = self.subcomponents.clone();
        subcomponents.trim_trailing(CompactString::is_empty);
        Component { subcomponents }
    }
}

fn trim_trailing<T>(items: &mut Vec<T>, is_empty: impl Fn(&T) -> bool) {
    while items.last().is_some_and(&is_empty) {
        items.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_read_like_slices_and_compare_with_arrays_and_vecs() {
        let mut parts: Parts<CompactString> = Parts::one("a".into());
        assert!(!parts.0.spilled());
        for value in ["b", "c", "d"] {
            parts.push(value.into());
        }
        assert_eq!(parts.len(), 4);
        assert_eq!(
            parts.0.capacity(),
            4,
            "one allocation when leaving the inline slot"
        );
        assert_eq!(parts, ["a", "b", "c", "d"]);
        assert_eq!(parts, vec!["a", "b", "c", "d"]);
        assert_eq!(parts[1], "b");
        assert_eq!(format!("{parts:?}"), r#"["a", "b", "c", "d"]"#);
        let from_vec: Parts<CompactString> = vec![String::from("a"), "b".into()].into();
        assert_eq!(
            from_vec
                .iter()
                .map(CompactString::as_str)
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(Parts::<Component>::default().len(), 0);
    }
}
