//! What a handler is: the types shared by the route table and the handlers it dispatches to.

use std::future::Future;
use std::pin::Pin;

use crate::error::ApiError;
use crate::http::{Request, Response};
use crate::state::State;

/// What a handler returns.
pub(crate) type Reply<'a> = Pin<Box<dyn Future<Output = Result<Response, ApiError>> + Send + 'a>>;
/// A handler: the worker's state, the request, and the path parameters.
pub(crate) type Handler = for<'a> fn(&'a State, Request, &'a Params) -> Reply<'a>;

/// The path parameters of a matched route, in template order.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Params(Vec<String>);

impl Params {
    /// The parameters, in template order.
    pub(crate) fn new(params: Vec<String>) -> Params {
        Params(params)
    }

    /// Every parameter, in template order.
    #[cfg(fuzzing)]
    pub(crate) fn all(&self) -> &[String] {
        &self.0
    }

    /// The first parameter (routes have at most one today).
    pub(crate) fn first(&self) -> &str {
        self.0.first().map_or("", String::as_str)
    }
}
