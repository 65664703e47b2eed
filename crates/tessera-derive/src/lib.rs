//! `#[derive(Module)]` for tessera: the [`Module`] impl of a struct from its fields.
//!
//! Each field is a child (a module, a `Parameter`, or a `Vec`, `Option` or `Box` of those,
//! through `tessera_nn::ModuleField`), named after the field, in declaration order — PyTorch's
//! `state_dict` order and names: `conv1.weight`, `blocks.0.attn.in_proj_weight`. The derive
//! writes `named_parameters`, `set_training` (train/eval reach every child) and `kind` (the
//! struct's name); the forward pass stays a method the user writes, with any inputs.
//!
//! Attributes:
//! - `#[module(skip)]` on a field: not a child (a plain setting such as a scale or a flag).
//! - `#[module(crate = "path")]` on the struct: where `tessera_nn` is reached; the default is
//!   `::tessera::nn`, or `::tessera_nn` inside the `tessera-nn` crate itself.
//!
//! [`Module`]: https://docs.rs/tessera-nn

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::{format_ident, quote};
use syn::{parse_macro_input, Data, DeriveInput, Fields, Index, LitStr};

/// Derives `Module` from a struct's fields; see the crate docs.
#[proc_macro_derive(Module, attributes(module))]
pub fn derive_module(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(input: &DeriveInput) -> syn::Result<Tokens> {
    let krate = crate_path(input)?;
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "#[derive(Module)] takes a struct: its fields are the module's children",
        ));
    };
    // (member expression, state_dict name) of every child field.
    let mut children = Vec::new();
    match &data.fields {
        Fields::Named(f) => {
            for field in &f.named {
                if !skipped(&field.attrs)? {
                    let ident = field.ident.clone().ok_or_else(|| {
                        syn::Error::new_spanned(field, "a named field without a name")
                    })?;
                    let name = ident.to_string();
                    // A raw identifier (`r#type`) is named without its prefix, as in PyTorch.
                    let name = name.strip_prefix("r#").unwrap_or(&name).to_string();
                    children.push((quote!(#ident), name));
                }
            }
        }
        Fields::Unnamed(f) => {
            for (i, field) in f.unnamed.iter().enumerate() {
                if !skipped(&field.attrs)? {
                    let index = Index::from(i);
                    children.push((quote!(#index), i.to_string()));
                }
            }
        }
        Fields::Unit => {}
    }
    let ident = &input.ident;
    let kind = ident.to_string();
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let collect = children.iter().map(|(member, name)| {
        quote! { #krate::ModuleField::collect_named(&self.#member, #name, &mut out); }
    });
    let train = children.iter().map(|(member, _)| {
        quote! { #krate::ModuleField::set_field_training(&mut self.#member, training); }
    });
    let out = format_ident!("out");
    Ok(quote! {
        impl #impl_generics #krate::Module for #ident #ty_generics #where_clause {
            fn named_parameters(&self) -> #krate::Named {
                let mut #out = #krate::Named::new();
                #(#collect)*
                #out
            }
            fn set_training(&mut self, training: bool) {
                let _ = training;
                #(#train)*
            }
            fn kind(&self) -> ::std::string::String {
                ::std::string::String::from(#kind)
            }
        }
    })
}

/// Whether a field carries `#[module(skip)]`; any other `module` argument is an error.
fn skipped(attrs: &[syn::Attribute]) -> syn::Result<bool> {
    let mut skip = false;
    for attr in attrs.iter().filter(|a| a.path().is_ident("module")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                skip = true;
                Ok(())
            } else {
                Err(meta.error("expected `skip` (a field that is not a child module)"))
            }
        })?;
    }
    Ok(skip)
}

/// The path of `tessera_nn` for the generated code (see the crate docs).
fn crate_path(input: &DeriveInput) -> syn::Result<Tokens> {
    let mut path = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("module")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("crate") {
                let lit: LitStr = meta.value()?.parse()?;
                path = Some(lit.parse::<syn::Path>()?);
                Ok(())
            } else {
                Err(meta.error("expected `crate = \"path::to::tessera_nn\"`"))
            }
        })?;
    }
    if let Some(p) = path {
        return Ok(quote!(#p));
    }
    // Cargo sets CARGO_PKG_NAME for the crate being compiled.
    Ok(match std::env::var("CARGO_PKG_NAME").as_deref() {
        Ok("tessera-nn") => quote!(::tessera_nn),
        _ => quote!(::tessera::nn),
    })
}
