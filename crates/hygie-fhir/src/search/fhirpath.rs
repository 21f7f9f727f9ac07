//! The subset of FHIRPath that the R4 search parameter expressions use, parsed, typed against
//! the R4 structure definitions and evaluated on `serde_json::Value`s.
//!
//! Supported, and nothing else (anything else is a [`ParseError`], which makes the search
//! parameter unsupported rather than wrongly indexed):
//! - member navigation `Patient.name.given`; repeating elements flatten; a choice element is
//!   named by its stem (`Observation.value` selects `valueQuantity`, `valueString`, …);
//! - a leading type name: the resource type itself, `Resource` or `DomainResource`;
//! - a leading member name, relative to the context (composite components: `code`);
//! - union `a | b`; parentheses;
//! - `(expr as Type)` and `expr.as(Type)`: keeps the nodes of that type, so on a choice element
//!   it selects one variant (`Observation.value as Quantity` is `valueQuantity`). Type names
//!   compare with their first letter in either case (`as(DateTime)` is `dateTime`), as R4
//!   itself writes both;
//! - `.where(resolve() is Type)`: keeps the References whose `reference` is `Type/…` (relative
//!   or absolute, versioned or not), whose `type` is `Type`, or that point at a contained
//!   resource of that type;
//! - `.where(field = 'literal')`: keeps the nodes whose `field` equals the literal.
//!
//! Expressions are compiled for a context type ([`compile`]), which resolves every step to the
//! JSON property names it reads and the FHIR type of what it reaches, so evaluation is plain
//! JSON lookups and every matched node comes with its type (`date` vs `Period` vs `Timing`,
//! `CodeableConcept` vs `Identifier`, …). A path that names no element is a compile error.
//!
//! ```
//! use hygie_fhir::search::fhirpath::{compile, parse};
//! use serde_json::json;
//! let expr = parse("(Observation.value as Quantity) | Observation.effective").unwrap();
//! let compiled = compile(&expr, "Observation").unwrap();
//! let obs = json!({"resourceType": "Observation", "valueQuantity": {"value": 5},
//!                  "effectivePeriod": {"start": "2020"}});
//! let types: Vec<&str> = compiled.evaluate(&obs).iter().map(|n| n.type_code).collect();
//! assert_eq!(types, ["Quantity", "Period"]);
//! assert!(parse("Patient.deceased.exists()").is_err());
//! ```

use std::collections::HashSet;
use std::fmt;

use serde_json::Value;

use crate::schema::{self, NodeId, NodeKind, Primitive, TypeKind};

/// Nesting of parentheses and `where(...)` beyond which parsing stops: R4 uses at most 2.
const MAX_NESTING: usize = 16;
/// Expressions longer than this are refused (the longest in R4 is about 1,900 bytes).
const MAX_LENGTH: usize = 8 * 1024;

/// Why an expression is outside the supported subset, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset in the expression.
    pub position: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: {}", self.position, self.message)
    }
}

impl std::error::Error for ParseError {}

/// A parsed expression, not yet bound to a context type.
#[derive(Debug, Clone, PartialEq)]
pub struct Expression {
    root: Expr,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Union(Vec<Expr>),
    Path { start: Start, steps: Vec<Step> },
}

#[derive(Debug, Clone, PartialEq)]
enum Start {
    /// A type name: must be the context's type, `Resource` or `DomainResource`.
    Type(String),
    /// A member name, relative to the context.
    Member(String),
    Paren(Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Member(String),
    As(String),
    ResolveIs(String),
    WhereEquals { field: String, literal: String },
}

/// Parses `text`; an error for anything outside the supported subset.
pub fn parse(text: &str) -> Result<Expression, ParseError> {
    if text.len() > MAX_LENGTH {
        return Err(ParseError {
            position: MAX_LENGTH,
            message: format!("expression longer than {MAX_LENGTH} bytes"),
        });
    }
    // Tokens up to the first character outside the subset; the parser runs on those, so the
    // error reported is the first one in the text (`exists()` before a later `!=`).
    let (tokens, lex_error) = tokenize(text);
    let end = lex_error.as_ref().map_or(text.len(), |e| e.position);
    let mut p = Parser {
        tokens: &tokens,
        i: 0,
        end,
        depth: 0,
    };
    let parsed = p.union().and_then(|root| match p.tokens.get(p.i) {
        None => Ok(Expression { root }),
        Some(t) => Err(p.error_at(t.pos, format!("unexpected {}", t.kind))),
    });
    match (parsed, lex_error) {
        (Err(e), Some(lex)) if e.position < lex.position => Err(e),
        (_, Some(lex)) => Err(lex),
        (parsed, None) => parsed,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum TokenKind {
    Ident(String),
    Str(String),
    Dot,
    Pipe,
    Open,
    Close,
    Equals,
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenKind::Ident(s) => write!(f, "'{s}'"),
            TokenKind::Str(s) => write!(f, "string '{s}'"),
            TokenKind::Dot => f.write_str("'.'"),
            TokenKind::Pipe => f.write_str("'|'"),
            TokenKind::Open => f.write_str("'('"),
            TokenKind::Close => f.write_str("')'"),
            TokenKind::Equals => f.write_str("'='"),
        }
    }
}

struct Token {
    kind: TokenKind,
    pos: usize,
}

fn tokenize(text: &str) -> (Vec<Token>, Option<ParseError>) {
    let b = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let pos = i;
        let kind = match c {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b'.' => TokenKind::Dot,
            b'|' => TokenKind::Pipe,
            b'(' => TokenKind::Open,
            b')' => TokenKind::Close,
            b'=' => TokenKind::Equals,
            b'\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match b.get(i) {
                        None => {
                            let e = ParseError {
                                position: pos,
                                message: "unterminated string".into(),
                            };
                            return (tokens, Some(e));
                        }
                        Some(b'\'') => break,
                        Some(b'\\') => {
                            let e = ParseError {
                                position: i,
                                message: "escapes in strings are not supported".into(),
                            };
                            return (tokens, Some(e));
                        }
                        Some(_) => {
                            // Multi-byte characters are copied whole: find the next char.
                            let ch = text[i..].chars().next().unwrap_or_default();
                            s.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                i += 1;
                tokens.push(Token {
                    kind: TokenKind::Str(s),
                    pos,
                });
                continue;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while b
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    i += 1;
                }
                tokens.push(Token {
                    kind: TokenKind::Ident(text[start..i].to_string()),
                    pos,
                });
                continue;
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or_default();
                let e = ParseError {
                    position: pos,
                    message: format!("'{ch}' is not in the supported FHIRPath subset"),
                };
                return (tokens, Some(e));
            }
        };
        tokens.push(Token { kind, pos });
        i += 1;
    }
    (tokens, None)
}

struct Parser<'t> {
    tokens: &'t [Token],
    i: usize,
    end: usize,
    depth: usize,
}

impl Parser<'_> {
    fn error_at(&self, position: usize, message: String) -> ParseError {
        ParseError { position, message }
    }

    fn pos(&self) -> usize {
        self.tokens.get(self.i).map_or(self.end, |t| t.pos)
    }

    fn peek(&self) -> Option<&TokenKind> {
        self.tokens.get(self.i).map(|t| &t.kind)
    }

    fn next(&mut self) -> Option<&TokenKind> {
        let t = self.tokens.get(self.i).map(|t| &t.kind);
        self.i += 1;
        t
    }

    fn expect(&mut self, kind: TokenKind) -> Result<(), ParseError> {
        let pos = self.pos();
        match self.next() {
            Some(k) if *k == kind => Ok(()),
            Some(k) => {
                let found = k.to_string();
                Err(self.error_at(pos, format!("expected {kind}, found {found}")))
            }
            None => Err(self.error_at(pos, format!("expected {kind} at the end"))),
        }
    }

    fn ident(&mut self, what: &str) -> Result<String, ParseError> {
        let pos = self.pos();
        match self.next() {
            Some(TokenKind::Ident(s)) => Ok(s.clone()),
            Some(k) => {
                let found = k.to_string();
                Err(self.error_at(pos, format!("expected {what}, found {found}")))
            }
            None => Err(self.error_at(pos, format!("expected {what} at the end"))),
        }
    }

    fn nest(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(self.error_at(self.pos(), "nested too deeply".into()));
        }
        Ok(())
    }

    /// `typed ('|' typed)*`
    fn union(&mut self) -> Result<Expr, ParseError> {
        let mut branches = vec![self.typed()?];
        while self.peek() == Some(&TokenKind::Pipe) {
            self.i += 1;
            branches.push(self.typed()?);
        }
        Ok(if branches.len() == 1 {
            branches.pop().unwrap_or(Expr::Union(Vec::new()))
        } else {
            Expr::Union(branches)
        })
    }

    /// `path ('as' Type)?`
    fn typed(&mut self) -> Result<Expr, ParseError> {
        let path = self.path()?;
        if let Some(TokenKind::Ident(word)) = self.peek() {
            if word == "as" {
                self.i += 1;
                let ty = self.ident("a type name after 'as'")?;
                return Ok(Expr::Path {
                    start: Start::Paren(Box::new(path)),
                    steps: vec![Step::As(ty)],
                });
            }
            let pos = self.pos();
            return Err(self.error_at(pos, format!("operator '{word}' is not supported")));
        }
        Ok(path)
    }

    /// `term ('.' invocation)*`
    fn path(&mut self) -> Result<Expr, ParseError> {
        let pos = self.pos();
        let start = match self.next() {
            Some(TokenKind::Open) => {
                self.nest()?;
                let inner = self.union()?;
                self.expect(TokenKind::Close)?;
                self.depth -= 1;
                Start::Paren(Box::new(inner))
            }
            Some(TokenKind::Ident(name)) => {
                let name = name.clone();
                if self.peek() == Some(&TokenKind::Open) {
                    return Err(self.error_at(pos, format!("function {name}() is not supported")));
                }
                if name.starts_with(|c: char| c.is_ascii_uppercase()) {
                    Start::Type(name)
                } else {
                    Start::Member(name)
                }
            }
            Some(k) => {
                let found = k.to_string();
                return Err(self.error_at(pos, format!("expected a path, found {found}")));
            }
            None => return Err(self.error_at(pos, "expected a path".into())),
        };
        let mut steps = Vec::new();
        while self.peek() == Some(&TokenKind::Dot) {
            self.i += 1;
            let pos = self.pos();
            let name = self.ident("an element or function name after '.'")?;
            if self.peek() != Some(&TokenKind::Open) {
                steps.push(Step::Member(name));
                continue;
            }
            self.i += 1;
            self.nest()?;
            let step = match name.as_str() {
                "as" => Step::As(self.ident("a type name in as()")?),
                "where" => self.where_condition()?,
                _ => {
                    return Err(self.error_at(pos, format!("function {name}() is not supported")));
                }
            };
            self.expect(TokenKind::Close)?;
            self.depth -= 1;
            steps.push(step);
        }
        Ok(Expr::Path { start, steps })
    }

    /// `resolve() is Type` or `field = 'literal'`
    fn where_condition(&mut self) -> Result<Step, ParseError> {
        let pos = self.pos();
        let name = self.ident("a condition in where()")?;
        if name == "resolve" {
            self.expect(TokenKind::Open)?;
            self.expect(TokenKind::Close)?;
            let pos = self.pos();
            if self.ident("'is'")? != "is" {
                return Err(self.error_at(pos, "expected 'is' after resolve()".into()));
            }
            return Ok(Step::ResolveIs(self.ident("a resource type after 'is'")?));
        }
        if self.peek() == Some(&TokenKind::Open) {
            return Err(self.error_at(pos, format!("function {name}() is not supported")));
        }
        self.expect(TokenKind::Equals)?;
        let pos = self.pos();
        match self.next() {
            Some(TokenKind::Str(literal)) => Ok(Step::WhereEquals {
                field: name,
                literal: literal.clone(),
            }),
            _ => Err(self.error_at(pos, "expected a string literal after '='".into())),
        }
    }
}

/// The FHIR type of a node, as compile time knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Ty {
    Primitive(Primitive),
    /// A resource, complex datatype or BackboneElement.
    Node(NodeId),
    /// A `Resource`-typed element: the type is read from `resourceType` at run time.
    AnyResource,
}

impl Ty {
    /// The FHIR type code: `dateTime`, `CodeableConcept`, `Patient`, `BackboneElement`.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Ty::Primitive(p) => p.code(),
            Ty::Node(id) => {
                let node = schema::schema().node(id);
                match node.kind {
                    NodeKind::Backbone => "BackboneElement",
                    _ => &node.path,
                }
            }
            Ty::AnyResource => "Resource",
        }
    }

    /// Whether `as(name)` keeps a node of this type.
    fn is_named(self, name: &str) -> bool {
        let code = self.code();
        let (Some(a), Some(b)) = (code.chars().next(), name.chars().next()) else {
            return false;
        };
        a.eq_ignore_ascii_case(&b) && code[a.len_utf8()..] == name[b.len_utf8()..]
    }

    fn from_kind(kind: TypeKind) -> Ty {
        match kind {
            TypeKind::Primitive(p) => Ty::Primitive(p),
            TypeKind::Node(id) => Ty::Node(id),
            TypeKind::Resource(Some(id)) => Ty::Node(id),
            TypeKind::Resource(None) => Ty::AnyResource,
        }
    }
}

/// A node that an expression selected, with its FHIR type.
#[derive(Debug, Clone, Copy)]
pub struct Typed<'a> {
    pub value: &'a Value,
    /// The FHIR type code: `HumanName`, `date`, `Reference`, `BackboneElement`, …
    pub type_code: &'static str,
    pub(crate) ty: Ty,
}

/// An expression bound to the types it is evaluated on.
#[derive(Debug, Clone)]
pub struct Compiled {
    root: CExpr,
    result: Vec<Ty>,
}

#[derive(Debug, Clone)]
enum CExpr {
    Union(Vec<CExpr>),
    Path {
        /// `None`: the context itself.
        start: Option<Box<CExpr>>,
        steps: Vec<CStep>,
    },
}

/// One property read: from a node of type `from`, the JSON property `json_name`, of type `to`.
#[derive(Debug, Clone, Copy)]
struct Edge {
    from: Ty,
    json_name: &'static str,
    to: Ty,
}

#[derive(Debug, Clone)]
enum CStep {
    Member(Vec<Edge>),
    As(Vec<Ty>),
    ResolveIs(String),
    WhereEquals { field: Vec<Edge>, literal: String },
}

/// Compiles `expr` for resources of type `resource_type`. The error says which step names no
/// element (or which construct cannot be typed).
pub fn compile(expr: &Expression, resource_type: &str) -> Result<Compiled, String> {
    let id = schema::schema()
        .resource_node(resource_type)
        .ok_or_else(|| format!("{resource_type} is not a resource type"))?;
    compile_for(expr, &[Ty::Node(id)])
}

/// Compiles `expr` for nodes of the given types (the context of a composite's components).
pub(crate) fn compile_for(expr: &Expression, context: &[Ty]) -> Result<Compiled, String> {
    let (root, result) = compile_expr(&expr.root, context)?;
    Ok(Compiled { root, result })
}

fn push_unique(types: &mut Vec<Ty>, ty: Ty) {
    if !types.contains(&ty) {
        types.push(ty);
    }
}

fn compile_expr(expr: &Expr, context: &[Ty]) -> Result<(CExpr, Vec<Ty>), String> {
    match expr {
        Expr::Union(branches) => {
            let mut out = Vec::new();
            let mut types = Vec::new();
            for b in branches {
                let (c, t) = compile_expr(b, context)?;
                out.push(c);
                for ty in t {
                    push_unique(&mut types, ty);
                }
            }
            Ok((CExpr::Union(out), types))
        }
        Expr::Path { start, steps } => {
            let (start, mut types, mut csteps) = match start {
                Start::Type(name) => {
                    check_type_start(name, context)?;
                    (None, context.to_vec(), Vec::new())
                }
                Start::Member(name) => {
                    let edges = member_edges(context, name)?;
                    let types = edge_targets(&edges);
                    (None, types, vec![CStep::Member(edges)])
                }
                Start::Paren(inner) => match compile_expr(inner, context)? {
                    // `(Observation.value as Quantity).x` is one path on the context.
                    (CExpr::Path { start: None, steps }, t) => (None, t, steps),
                    (c, t) => (Some(Box::new(c)), t, Vec::new()),
                },
            };
            for step in steps {
                match step {
                    Step::Member(name) => {
                        let edges = member_edges(&types, name)?;
                        types = edge_targets(&edges);
                        csteps.push(CStep::Member(edges));
                    }
                    Step::As(name) => {
                        let kept: Vec<Ty> =
                            types.iter().copied().filter(|t| t.is_named(name)).collect();
                        if kept.is_empty() {
                            return Err(format!(
                                "as({name}): nothing of that type here (only {})",
                                type_list(&types)
                            ));
                        }
                        types.clone_from(&kept);
                        match csteps.last_mut() {
                            // A member then as(): read only the JSON names of that type
                            // (`valueQuantity`, not the other ten `value[x]` names).
                            Some(CStep::Member(edges)) => edges.retain(|e| kept.contains(&e.to)),
                            _ => csteps.push(CStep::As(kept)),
                        }
                    }
                    Step::ResolveIs(name) => {
                        if !schema::is_resource_type(name) {
                            return Err(format!("resolve() is {name}: not a resource type"));
                        }
                        let kept: Vec<Ty> = types
                            .iter()
                            .copied()
                            .filter(|t| t.code() == "Reference")
                            .collect();
                        if kept.is_empty() {
                            return Err(format!(
                                "resolve() on {}, not on a Reference",
                                type_list(&types)
                            ));
                        }
                        types = kept;
                        csteps.push(CStep::ResolveIs(name.clone()));
                    }
                    Step::WhereEquals { field, literal } => {
                        let edges = member_edges(&types, field)?;
                        if !edge_targets(&edges)
                            .iter()
                            .all(|t| matches!(t, Ty::Primitive(_)))
                        {
                            return Err(format!("where({field} = …): {field} is not a primitive"));
                        }
                        csteps.push(CStep::WhereEquals {
                            field: edges,
                            literal: literal.clone(),
                        });
                    }
                }
            }
            Ok((
                CExpr::Path {
                    start,
                    steps: csteps,
                },
                types,
            ))
        }
    }
}

fn type_list(types: &[Ty]) -> String {
    types
        .iter()
        .map(|t| t.code())
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_type_start(name: &str, context: &[Ty]) -> Result<(), String> {
    let ok = match context {
        [Ty::Node(id)] => {
            let node = schema::schema().node(*id);
            node.kind == NodeKind::Resource
                && (*node.path == *name
                    || name == "Resource"
                    || (name == "DomainResource"
                        && node.elements.iter().any(|e| &*e.name == "text")))
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the expression starts with {name}, but applies to {}",
            type_list(context)
        ))
    }
}

/// The properties that `.name` reads from nodes of the given types.
fn member_edges(from: &[Ty], name: &str) -> Result<Vec<Edge>, String> {
    let s = schema::schema();
    let mut edges = Vec::new();
    for &ty in from {
        let id = match ty {
            Ty::Node(id) => id,
            Ty::Primitive(p) => {
                return Err(format!(".{name} on the primitive {}", p.code()));
            }
            Ty::AnyResource => {
                return Err(format!(".{name} on a Resource of unknown type"));
            }
        };
        let node = s.node(id);
        for element in &node.elements {
            let stem = element.name.strip_suffix("[x]").unwrap_or(&element.name);
            if stem != name {
                continue;
            }
            for t in &element.types {
                edges.push(Edge {
                    from: ty,
                    json_name: &t.json_name,
                    to: Ty::from_kind(t.kind),
                });
            }
        }
    }
    if edges.is_empty() {
        return Err(format!("{} has no element '{name}'", type_list(from)));
    }
    Ok(edges)
}

fn edge_targets(edges: &[Edge]) -> Vec<Ty> {
    let mut types = Vec::new();
    for e in edges {
        push_unique(&mut types, e.to);
    }
    types
}

impl Compiled {
    /// The types the expression can select, e.g. `["Quantity", "SampledData"]`.
    pub fn result_types(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.result.iter().map(|t| t.code())
    }

    pub(crate) fn result_tys(&self) -> &[Ty] {
        &self.result
    }

    /// The nodes the expression selects in `resource` (of the type it was compiled for), in
    /// document order per union branch, each node once.
    pub fn evaluate<'a>(&self, resource: &'a Value) -> Vec<Typed<'a>> {
        match root(resource) {
            Some(node) => self.evaluate_on(resource, &[node]),
            None => Vec::new(),
        }
    }

    /// Evaluates on `context` nodes, within `root` (for contained references).
    pub(crate) fn evaluate_on<'a>(&self, root: &'a Value, context: &[Typed<'a>]) -> Vec<Typed<'a>> {
        let mut out = Vec::new();
        eval(&self.root, root, context, &mut out);
        out
    }
}

fn typed(value: &Value, ty: Ty) -> Typed<'_> {
    Typed {
        value,
        type_code: ty.code(),
        ty,
    }
}

/// A resource as the context of an evaluation; `None` if it is not of a known type.
pub(crate) fn root(resource: &Value) -> Option<Typed<'_>> {
    resource_ty(resource).map(|ty| typed(resource, ty))
}

/// The node type of a resource, from its `resourceType`.
fn resource_ty(resource: &Value) -> Option<Ty> {
    let name = resource.get("resourceType")?.as_str()?;
    schema::schema().resource_node(name).map(Ty::Node)
}

fn eval<'a>(expr: &CExpr, root: &'a Value, context: &[Typed<'a>], out: &mut Vec<Typed<'a>>) {
    match expr {
        CExpr::Union(branches) => {
            // A path reaches each JSON node once (JSON is a tree), so only a union can select
            // a node twice; the first occurrence is kept.
            let start = out.len();
            for b in branches {
                eval(b, root, context, out);
            }
            let selected = out.split_off(start);
            let mut seen = HashSet::with_capacity(selected.len());
            out.extend(
                selected
                    .into_iter()
                    .filter(|n| seen.insert((std::ptr::from_ref(n.value), n.ty))),
            );
        }
        CExpr::Path { start, steps } => {
            let mut items = match start {
                None => context.to_vec(),
                Some(inner) => {
                    let mut v = Vec::new();
                    eval(inner, root, context, &mut v);
                    v
                }
            };
            for step in steps {
                items = apply(step, root, &items);
                if items.is_empty() {
                    return;
                }
            }
            out.extend(items);
        }
    }
}

/// Appends the values of property `edge.json_name` of `item` (array items one by one).
fn read_member<'a>(item: &Typed<'a>, edges: &[Edge], out: &mut Vec<Typed<'a>>) {
    let Some(object) = item.value.as_object() else {
        return;
    };
    for edge in edges.iter().filter(|e| e.from == item.ty) {
        let Some(value) = object.get(edge.json_name) else {
            continue;
        };
        let values = match value {
            Value::Array(items) => items.as_slice(),
            other => std::slice::from_ref(other),
        };
        for v in values {
            if v.is_null() {
                continue;
            }
            let ty = match edge.to {
                Ty::AnyResource => match resource_ty(v) {
                    Some(ty) => ty,
                    None => continue,
                },
                ty => ty,
            };
            out.push(typed(v, ty));
        }
    }
}

fn apply<'a>(step: &CStep, root: &'a Value, items: &[Typed<'a>]) -> Vec<Typed<'a>> {
    let mut out = Vec::new();
    match step {
        CStep::Member(edges) => {
            for item in items {
                read_member(item, edges, &mut out);
            }
        }
        CStep::As(types) => out.extend(items.iter().filter(|n| types.contains(&n.ty))),
        CStep::ResolveIs(type_name) => out.extend(
            items
                .iter()
                .filter(|n| n.type_code == "Reference" && resolves_to(root, n.value, type_name)),
        ),
        CStep::WhereEquals { field, literal } => {
            for item in items {
                let mut values = Vec::new();
                read_member(item, field, &mut values);
                if values.iter().any(|v| primitive_equals(v.value, literal)) {
                    out.push(*item);
                }
            }
        }
    }
    out
}

fn primitive_equals(value: &Value, literal: &str) -> bool {
    match value {
        Value::String(s) => s == literal,
        Value::Bool(b) => literal == if *b { "true" } else { "false" },
        Value::Number(n) => n.to_string() == literal,
        _ => false,
    }
}

/// Whether a Reference points at a resource of type `type_name`, as far as can be told
/// without fetching it.
fn resolves_to(root: &Value, reference: &Value, type_name: &str) -> bool {
    if reference.get("type").and_then(Value::as_str) == Some(type_name) {
        return true;
    }
    let Some(r) = reference.get("reference").and_then(Value::as_str) else {
        return false;
    };
    if let Some(local) = r.strip_prefix('#') {
        return root
            .get("contained")
            .and_then(Value::as_array)
            .is_some_and(|contained| {
                contained.iter().any(|c| {
                    c.get("id").and_then(Value::as_str) == Some(local)
                        && c.get("resourceType").and_then(Value::as_str) == Some(type_name)
                })
            });
    }
    reference_type(r) == Some(type_name)
}

/// The resource type named by a literal reference: `Type/id`, `Type/id/_history/v`, or an
/// absolute URL ending so. `None` for `urn:`, `#`, conditional and unparseable references.
pub(crate) fn reference_type(reference: &str) -> Option<&str> {
    split_reference(reference).map(|(t, _)| t)
}

/// (type, id) of a relative reference (`Type/id`, `Type/id/_history/v`): the only spelling
/// that names a resource of this server. An absolute URL names a resource elsewhere, even
/// when it ends in `Type/id` (the hub rewrites URLs under its own base to relative ones
/// before it stores them).
pub(crate) fn split_local_reference(reference: &str) -> Option<(&str, &str)> {
    if reference.contains("://") {
        return None;
    }
    split_reference(reference)
}

/// (type, id) of a literal reference, relative or absolute, versioned or not.
pub(crate) fn split_reference(reference: &str) -> Option<(&str, &str)> {
    if reference.starts_with('#') || reference.starts_with("urn:") || reference.contains('?') {
        return None;
    }
    let mut parts: Vec<&str> = reference.rsplitn(5, '/').collect();
    parts.reverse();
    // parts: up to 5 trailing segments, in order.
    let n = parts.len();
    let (t, id) = if n >= 4 && parts[n - 2] == "_history" {
        (parts[n - 4], parts[n - 3])
    } else if n >= 2 {
        (parts[n - 2], parts[n - 1])
    } else {
        return None;
    };
    let relative_ok = n == 2 || (n == 4 && parts[n - 2] == "_history");
    let absolute = reference.contains("://");
    if !(relative_ok || absolute) {
        return None;
    }
    (schema::is_resource_type(t) && Primitive::Id.is_valid_format(id)).then_some((t, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval_types(expr: &str, resource: &Value) -> Vec<(String, &'static str)> {
        let rt = resource["resourceType"].as_str().unwrap();
        let c = compile(&parse(expr).unwrap(), rt).unwrap_or_else(|e| panic!("{expr}: {e}"));
        c.evaluate(resource)
            .into_iter()
            .map(|n| (n.value.to_string(), n.type_code))
            .collect()
    }

    #[test]
    fn navigation_flattens_arrays() {
        let p = json!({"resourceType": "Patient",
            "name": [{"given": ["A", "B"]}, {"given": ["C"], "family": "F"}]});
        let got = eval_types("Patient.name.given", &p);
        assert_eq!(
            got,
            [
                ("\"A\"".to_string(), "string"),
                ("\"B\"".to_string(), "string"),
                ("\"C\"".to_string(), "string")
            ]
        );
        assert_eq!(eval_types("Patient.name", &p)[0].1, "HumanName");
        assert_eq!(
            eval_types(
                "Resource.id",
                &json!({"resourceType": "Patient", "id": "x"})
            )[0]
            .1,
            "id"
        );
    }

    #[test]
    fn choice_types() {
        let o = json!({"resourceType": "Observation", "valueQuantity": {"value": 1},
            "effectiveDateTime": "2020"});
        assert_eq!(eval_types("Observation.value", &o)[0].1, "Quantity");
        assert_eq!(eval_types("(Observation.value as Quantity)", &o).len(), 1);
        assert_eq!(eval_types("Observation.value.as(Quantity)", &o).len(), 1);
        assert!(eval_types("(Observation.value as CodeableConcept)", &o).is_empty());
        assert_eq!(eval_types("Observation.effective", &o)[0].1, "dateTime");
        let c = json!({"resourceType": "Condition", "onsetAge": {"value": 3}});
        assert_eq!(
            eval_types("Condition.onset.as(Age) | Condition.onset.as(Range)", &c)[0].1,
            "Age"
        );
        // R4 writes as(DateTime) once: the first letter's case does not matter.
        assert_eq!(
            eval_types("Observation.effective.as(DateTime)", &o).len(),
            1
        );
    }

    #[test]
    fn resolve_is() {
        let o = json!({"resourceType": "Observation",
        "contained": [{"resourceType": "Patient", "id": "p1"}],
        "performer": [
            {"reference": "Patient/1"},
            {"reference": "http://x/fhir/Patient/2/_history/3"},
            {"reference": "Practitioner/1"},
            {"type": "Patient", "identifier": {"value": "x"}},
            {"reference": "#p1"},
            {"reference": "urn:uuid:0c3b1a3e-8f2c-4e1a-9a8b-2f3c4d5e6f70"}
        ]});
        let got = eval_types("Observation.performer.where(resolve() is Patient)", &o);
        assert_eq!(got.len(), 4);
        assert!(got.iter().all(|(_, t)| *t == "Reference"));
    }

    #[test]
    fn where_equals_and_union_dedup() {
        let p = json!({"resourceType": "Patient", "telecom": [
            {"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}]});
        let got = eval_types("Patient.telecom.where(system='email')", &p);
        assert_eq!(got.len(), 1);
        assert!(got[0].0.contains("a@b"));
        assert_eq!(eval_types("Patient.telecom | Patient.telecom", &p).len(), 2);
    }

    #[test]
    fn relative_context() {
        let s = schema::schema();
        let obs = s.resource_node("Observation").unwrap();
        let component = match s.node(obs).children.get("component") {
            Some(c) => Ty::from_kind(s.node(obs).elements[usize::from(c.element)].types[0].kind),
            None => panic!("Observation.component"),
        };
        let c = compile_for(
            &parse("value.as(Quantity)").unwrap(),
            &[Ty::Node(obs), component],
        )
        .unwrap();
        assert_eq!(c.result_types().collect::<Vec<_>>(), ["Quantity"]);
    }

    #[test]
    fn unsupported_is_an_error() {
        for e in [
            "Patient.deceased.exists() and Patient.deceased != false",
            "Bundle.entry[0].resource",
            "%resource.referenceSeq.chromosome",
            "Patient.extension('http://x')",
            "Patient.name.ofType(HumanName)",
            "Patient.name.where(use != 'old')",
            "Patient.name.where(given)",
            "Patient.",
            "(Patient.name",
            "Patient.name)",
            "'unterminated",
            "",
            "a | ",
        ] {
            assert!(parse(e).is_err(), "{e}");
        }
        let deep = format!("{}Patient.name{}", "(".repeat(100), ")".repeat(100));
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn compile_errors() {
        let c = |e: &str, t: &str| compile(&parse(e).unwrap(), t);
        assert!(c("Patient.nope", "Patient").is_err());
        assert!(c("Observation.code", "Patient").is_err());
        assert!(c("(Observation.value as Money)", "Observation").is_err());
        assert!(c("Patient.gender.where(resolve() is Patient)", "Patient").is_err());
        assert!(c("Patient.gender.text", "Patient").is_err());
        assert!(c("DomainResource.text", "Bundle").is_err());
        assert!(c("DomainResource.text", "Patient").is_ok());
    }

    #[test]
    fn references() {
        assert_eq!(split_reference("Patient/1"), Some(("Patient", "1")));
        assert_eq!(
            split_reference("Patient/1/_history/2"),
            Some(("Patient", "1"))
        );
        assert_eq!(
            split_reference("http://x/fhir/Patient/1"),
            Some(("Patient", "1"))
        );
        assert_eq!(
            split_reference("https://x/Patient/1/_history/2"),
            Some(("Patient", "1"))
        );
        assert_eq!(split_reference("a/Patient/1"), None);
        assert_eq!(split_reference("Nope/1"), None);
        assert_eq!(split_reference("Patient/a b"), None);
        assert_eq!(split_reference("Patient?identifier=1"), None);
        assert_eq!(split_reference("urn:uuid:x"), None);
        assert_eq!(split_reference("#x"), None);
        assert_eq!(split_reference("Patient"), None);
        assert_eq!(split_local_reference("Patient/1"), Some(("Patient", "1")));
        assert_eq!(
            split_local_reference("Patient/1/_history/2"),
            Some(("Patient", "1"))
        );
        assert_eq!(split_local_reference("http://x/fhir/Patient/1"), None);
        assert_eq!(split_local_reference("urn:uuid:x"), None);
    }
}
