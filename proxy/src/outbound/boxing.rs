//! What the outbound layers share: a request's future,
//! boxed once. A leaf, so every layer can use it without depending on the stack that
//! composes them.

use futures::future::BoxFuture;

/// `fut` as a [`BoxFuture`], without a second allocation when it already is one: each
/// layer's future is boxed (see [`super::stack::send`]), so a layer that wraps its inner future would
/// otherwise box a box on every request.
pub fn boxed<F, T>(fut: F) -> BoxFuture<'static, T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: 'static,
{
    let mut slot = Some(fut);
    let any: &mut dyn std::any::Any = &mut slot;
    if let Some(already) = any.downcast_mut::<Option<BoxFuture<'static, T>>>() {
        if let Some(already) = already.take() {
            return already;
        }
    }
    match slot {
        Some(fut) => Box::pin(fut),
        None => unreachable!("only taken when it was already boxed"),
    }
}
