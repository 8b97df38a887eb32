//! Form fields with their bilingual labels, and the problem a registry error names, shown at
//! the field at fault or above the form.

use greenplate_registry::RegistryError;
use maud::{Markup, html};

use crate::i18n::{Bilingual, explain, field_name};
use crate::page::both;

/// What the page says went wrong: at a field (registry name), or for the whole form.
#[derive(Debug, Default)]
pub(super) struct Problem {
    pub(super) field: Option<&'static str>,
    pub(super) message: Option<Bilingual>,
}

impl Problem {
    pub(super) fn from(e: &RegistryError) -> Self {
        let (field, message) = explain(e);
        Self {
            field,
            message: Some(message),
        }
    }

    fn at(&self, field: &str) -> Option<&Bilingual> {
        (self.field == Some(field))
            .then_some(self.message.as_ref())
            .flatten()
    }

    /// The message, unless it is shown at a field.
    fn general(&self) -> Option<&Bilingual> {
        self.field
            .is_none()
            .then_some(self.message.as_ref())
            .flatten()
    }
}

/// An input with its bilingual label and, when it is at fault, the error beside it. Its id
/// is `form` + `-` + the name (dots as dashes), or the name alone for `form` "".
pub(super) fn field(
    form: &str,
    name: &'static str,
    value: &str,
    kind: &str,
    problem: &Problem,
    hint: &str,
) -> Markup {
    let (zh, en) = field_name(name);
    let id = match form {
        "" => name.replace('.', "-"),
        f => format!("{f}-{}", name.replace('.', "-")),
    };
    let error = problem.at(name);
    html! {
        div.field.bad[error.is_some()] {
            label for=(id) { span.zh { (zh) } " " span.en { (en) } }
            input id=(id) name=(name) type=(kind) value=(value)
                autocomplete="off" aria-invalid=(if error.is_some() { "true" } else { "false" })
                placeholder=(hint)
                inputmode=[(kind == "password").then_some("numeric")]
                data-scan[name.ends_with("tag_id")];
            @if let Some(m) = error {
                p.error role="alert" data-field=(name) { (both(m)) }
            }
        }
    }
}

pub(super) fn general_error(problem: &Problem) -> Markup {
    html! {
        @if let Some(m) = problem.general() {
            p.error.banner role="alert" { (both(m)) }
        }
    }
}

pub(super) static EMPTY: Problem = Problem {
    field: None,
    message: None,
};
