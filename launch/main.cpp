// Placeholder translation unit replaced by the longattn command.
int main() { return 0; }
