//! The message tree: segments, fields, repetitions, components, sub-components.
//!
//! Values are stored **unescaped** and **normalized**: trailing empty fields, repetitions,
//! components and sub-components are not kept, because HL7 gives them no meaning and an
//! encoder drops them. [`crate::parse`] always returns a normalized message; build messages by
//! hand with the constructors below and call [`Message::normalized`] before comparing.

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
    pub repetitions: Vec<Repetition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Repetition {
    pub components: Vec<Component>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Component {
    pub subcomponents: Vec<String>,
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
            repetitions: vec![Repetition {
                components: components
                    .into_iter()
                    .map(|c| Component {
                        subcomponents: vec![c.into()],
                    })
                    .collect(),
            }],
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
        let mut repetitions: Vec<Repetition> = self
            .repetitions
            .iter()
            .map(Repetition::normalized)
            .collect();
        trim_trailing(&mut repetitions, Repetition::is_empty);
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
        let mut components: Vec<Component> =
            self.components.iter().map(Component::normalized).collect();
        trim_trailing(&mut components, Component::is_empty);
        Repetition { components }
    }
}

impl Component {
    /// The first sub-component, or `""`.
    pub fn value(&self) -> &str {
        self.subcomponents.first().map_or("", String::as_str)
    }

    /// Sub-component `number` (1-based).
    pub fn subcomponent(&self, number: usize) -> Option<&str> {
        self.subcomponents
            .get(number.checked_sub(1)?)
            .map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.subcomponents.iter().all(String::is_empty)
    }

    pub fn normalized(&self) -> Component {
        let mut subcomponents = self.subcomponents.clone();
        trim_trailing(&mut subcomponents, String::is_empty);
        Component { subcomponents }
    }
}

pub(crate) fn trim_trailing<T>(items: &mut Vec<T>, is_empty: impl Fn(&T) -> bool) {
    while items.last().is_some_and(&is_empty) {
        items.pop();
    }
}
