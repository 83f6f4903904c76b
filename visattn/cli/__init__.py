"""The command line: ``visattn <command>`` (``main``) and one module per subcommand. The top floor: nothing in the
package imports it."""
